//! The conditional layer's cost, each case beside the same bare handler.
//!
//! Run with `cargo bench -p revalidate --bench layer`. Requests are built outside
//! the timed section; each iteration drives one request through the service and
//! reads the whole response body.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use revalidate::{ConditionalLayer, EntityTag, Validators};
use serde::Serialize;
use tower::{Layer, Service, ServiceExt, service_fn};

#[derive(Clone, Serialize)]
struct Item {
    id: usize,
    name: &'static str,
    price: f64,
}

/// About 5 KiB of JSON once serialized.
fn items() -> Vec<Item> {
    (0..132)
        .map(|id| Item {
            id,
            name: "widget",
            price: 12.5,
        })
        .collect()
}

fn json_response(body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().unwrap());
    Ok(response)
}

fn request(if_none_match: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::get("/items");
    if let Some(tag) = if_none_match {
        builder = builder.header("if-none-match", tag);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

fn case<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    service: &S,
    if_none_match: Option<&str>,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.to_async(runtime).iter_batched(
            || (service.clone(), request(if_none_match)),
            |(service, request)| async move {
                let response = service.oneshot(request).await.unwrap();
                black_box(
                    response
                        .into_body()
                        .collect()
                        .await
                        .unwrap()
                        .to_bytes()
                        .len(),
                )
            },
            BatchSize::SmallInput,
        )
    });
}

fn handler_group<H>(c: &mut Criterion, runtime: &tokio::runtime::Runtime, label: &str, handler: H)
where
    H: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    let version = |_: &Parts| {
        std::future::ready(Some(
            Validators::new().etag(EntityTag::strong("v42").unwrap()),
        ))
    };
    let content = ConditionalLayer::new().layer(handler.clone());
    let first = runtime
        .block_on(content.clone().oneshot(request(None)))
        .unwrap();
    let tag = first.headers()["etag"].to_str().unwrap().to_string();
    let validators_first = ConditionalLayer::new()
        .validators(version)
        .layer(handler.clone());

    let mut group = c.benchmark_group(format!("5 KiB JSON, {label}"));
    case(&mut group, runtime, "bare handler", &handler, Some(&tag));
    case(&mut group, runtime, "content ETag, 200", &content, None);
    case(
        &mut group,
        runtime,
        "content ETag, 304",
        &content,
        Some(&tag),
    );
    case(
        &mut group,
        runtime,
        "validator-first, 304",
        &validators_first,
        Some("\"v42\""),
    );
    case(
        &mut group,
        runtime,
        "validator-first, 200",
        &validators_first,
        None,
    );
    group.finish();
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    // Two bare handlers: one serializes its 5 KiB answer per request, as an API
    // does; one returns prebuilt bytes, the cheapest handler possible and so the
    // layer's worst case in relative terms.
    let data = items();
    let serializing = service_fn(move |_: Request<Full<Bytes>>| {
        let body = Bytes::from(serde_json::to_vec(&data).unwrap());
        std::future::ready(json_response(body))
    });
    let bytes = Bytes::from(serde_json::to_vec(&items()).unwrap());
    assert!((5000..5400).contains(&bytes.len()), "{}", bytes.len());
    let prebuilt =
        service_fn(move |_: Request<Full<Bytes>>| std::future::ready(json_response(bytes.clone())));

    handler_group(c, &runtime, "serializing handler", serializing);
    handler_group(c, &runtime, "prebuilt bytes", prebuilt);

    let raw = Bytes::from(serde_json::to_vec(&items()).unwrap());
    c.bench_function("xxh3-128 of 5 KiB", |b| {
        b.iter(|| black_box(twox_hash::XxHash3_128::oneshot(black_box(&raw))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
