//! `bench-origin --listen ADDR`: the benchmark's origin. `/obj/N` is a 5 KiB
//! body built per request, cacheable for an hour, with an ETag honoured by
//! `If-None-Match`.

use hyper::header::HeaderValue;
use revalidate_bench::{body, etag, not_found, object_number, object_response, serve};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = revalidate_bench::listen_arg("bench-origin");
    serve("bench-origin", addr, |req| async move {
        match object_number(req.uri().path()) {
            Some(n) => {
                let tag = HeaderValue::from_str(&etag(n)).expect("an ETag is a valid header value");
                object_response(&req, body(n), tag)
            }
            None => not_found(),
        }
    })
    .await
}
