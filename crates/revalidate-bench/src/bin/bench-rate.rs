//! `bench-rate`: latency at a fixed offered rate, for comparing tails (p99) of
//! servers that differ in throughput.
//!
//! ```text
//! bench-rate --target 127.0.0.1:8080 --rate 40000 --duration 10 [--warmup 2]
//!            [--connections 32] [--path /obj/1 | --distinct 10000] [--header 'Name: value']
//! ```
//!
//! Requests are due every `1 / rate` seconds from the start, whatever the server
//! does (an open loop). Each goes out on an idle keep-alive connection as soon as
//! one is free; its latency runs from the moment it was *due* to its response's
//! last byte, so a server that stalls is charged for the requests that waited
//! behind the stall too (no coordinated omission). Requests due in the warm-up are
//! sent but not counted.
//!
//! Written here because the load generators at hand cannot hold a rate to the
//! microsecond on one core: wrk measures a closed loop (latency at saturation,
//! where a faster server queues more), and wrk2 and oha pace requests with
//! millisecond timers, which adds up to a millisecond to every latency they
//! report. This one never sleeps: it polls its sockets without blocking and
//! reads the clock between polls, so it needs a core of its own (`taskset`).
//!
//! It prints one `key value` pair per line: `requests`, `errors`, `rate`
//! (achieved, per second), and `p50`, `p90`, `p99`, `p99.9`, `max` in
//! microseconds.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const USAGE: &str = "usage: bench-rate --target HOST:PORT --rate PER_SECOND --duration SECONDS \
[--warmup SECONDS] [--connections N] [--path PATH | --distinct N] [--header 'NAME: VALUE']";

/// What to send, and how fast.
struct Plan {
    target: SocketAddr,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    paths: Paths,
    headers: Vec<String>,
}

/// The paths the requests name.
enum Paths {
    /// The same path every time.
    One(String),
    /// `/obj/N`, N uniformly random in `0..count`.
    Objects(u64),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let plan = match parse(args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("bench-rate: {message} (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(&plan) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bench-rate: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: Vec<String>) -> Result<Plan, String> {
    let mut plan = Plan {
        target: SocketAddr::from(([127, 0, 0, 1], 80)),
        rate: 0.0,
        duration: Duration::ZERO,
        warmup: Duration::from_secs(2),
        connections: 32,
        paths: Paths::One("/".into()),
        headers: Vec::new(),
    };
    let mut target = None;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag} {value}: not {what}");
        let seconds = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
        };
        match flag.as_str() {
            "--target" => target = Some(value.parse().map_err(|_| bad("an address"))?),
            "--rate" => {
                plan.rate = value
                    .parse()
                    .ok()
                    .filter(|r: &f64| r.is_finite() && *r > 0.0)
                    .ok_or_else(|| bad("a positive rate"))?;
            }
            "--duration" => plan.duration = seconds(&value).ok_or_else(|| bad("seconds"))?,
            "--warmup" => plan.warmup = seconds(&value).ok_or_else(|| bad("seconds"))?,
            "--connections" => {
                plan.connections = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("a positive count"))?;
            }
            "--path" if value.starts_with('/') => plan.paths = Paths::One(value),
            "--distinct" => {
                plan.paths = Paths::Objects(
                    value
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| bad("a positive count"))?,
                );
            }
            "--header" if value.contains(':') && !value.contains(['\r', '\n']) => {
                plan.headers.push(value);
            }
            _ => return Err(format!("unknown or malformed: {flag} {value}")),
        }
    }
    plan.target = target.ok_or("--target is required")?;
    if plan.duration.is_zero() || plan.rate == 0.0 {
        return Err("--rate and --duration are required".into());
    }
    Ok(plan)
}

/// A keep-alive connection, with at most one request in flight (as wrk's).
struct Connection {
    stream: TcpStream,
    /// When the request in flight was due; `None` when idle.
    due: Option<Instant>,
    /// The response read so far.
    read: Vec<u8>,
}

/// Counts and latencies of the requests due after the warm-up.
#[derive(Default)]
struct Tally {
    latencies: Vec<u64>,
    errors: u64,
}

fn run(plan: &Plan) -> std::io::Result<String> {
    let mut poll = Poll::new()?;
    let mut connections = Vec::with_capacity(plan.connections);
    for token in 0..plan.connections {
        connections.push(connect(&poll, plan.target, token)?);
    }
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let start = Instant::now();
    let counted_from = start + plan.warmup;
    let end = counted_from + plan.duration;
    // Requests due but not sent yet, every connection being busy.
    let mut waiting: VecDeque<Instant> = VecDeque::new();
    let mut idle: Vec<usize> = (0..plan.connections).collect();
    let mut next_due = start;
    let mut tally = Tally::default();
    let mut random = Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut request = Vec::with_capacity(256);
    let tail = request_tail(plan);
    let mut events = Events::with_capacity(plan.connections);
    // Where reads land before they join their response: one buffer for the run,
    // not one zeroed per readable event.
    let mut chunk = vec![0u8; 16 * 1024];
    // What is still in flight at the end gets this long to finish.
    let give_up = end + Duration::from_secs(2);
    loop {
        let now = Instant::now();
        while next_due <= now && next_due < end {
            waiting.push_back(next_due);
            next_due += interval;
        }
        if next_due >= end && waiting.is_empty() && idle.len() == connections.len() {
            break;
        }
        if now >= give_up {
            let unanswered = waiting
                .iter()
                .chain(connections.iter().filter_map(|c| c.due.as_ref()));
            for &due in unanswered {
                count(&mut tally, due, counted_from, None);
            }
            break;
        }
        while !waiting.is_empty() {
            let Some(token) = idle.pop() else { break };
            let due = waiting.pop_front().expect("not empty");
            write_request(&mut request, plan, &tail, &mut random);
            let connection = &mut connections[token];
            match connection.stream.write(&request) {
                // An idle connection's send buffer is empty: a request this small
                // goes out whole.
                Ok(n) if n == request.len() => connection.due = Some(due),
                _ => {
                    count(&mut tally, due, counted_from, None);
                    connections[token] = connect(&poll, plan.target, token)?;
                    idle.push(token);
                }
            }
        }
        poll.poll(&mut events, Some(Duration::ZERO))?;
        for event in &events {
            let token = event.token().0;
            let connection = &mut connections[token];
            let Some(due) = connection.due else {
                // An idle connection turns readable when the server closes it:
                // replaced now, rather than failing the next request sent on it.
                if !is_open(&mut connection.stream) {
                    connections[token] = connect(&poll, plan.target, token)?;
                }
                continue;
            };
            match read_response(connection, &mut chunk) {
                Progress::Partial => continue,
                Progress::Complete { open } => {
                    count(&mut tally, due, counted_from, Some(Instant::now()));
                    connection.due = None;
                    connection.read.clear();
                    if !open {
                        connections[token] = connect(&poll, plan.target, token)?;
                    }
                }
                Progress::Failed => {
                    count(&mut tally, due, counted_from, None);
                    connections[token] = connect(&poll, plan.target, token)?;
                }
            }
            idle.push(token);
        }
    }
    Ok(report(tally, plan.duration))
}

fn connect(poll: &Poll, target: SocketAddr, token: usize) -> std::io::Result<Connection> {
    // Connected before it is registered: the first request then never finds the
    // connection still opening.
    let std_stream = std::net::TcpStream::connect(target)?;
    std_stream.set_nodelay(true)?;
    std_stream.set_nonblocking(true)?;
    let mut stream = TcpStream::from_std(std_stream);
    poll.registry()
        .register(&mut stream, Token(token), Interest::READABLE)?;
    Ok(Connection {
        stream,
        due: None,
        read: Vec::with_capacity(8192),
    })
}

/// Everything of a request after its path: the version, `Host`, the `--header`
/// fields and the blank line, laid out once.
fn request_tail(plan: &Plan) -> Vec<u8> {
    let mut tail = format!(" HTTP/1.1\r\nHost: {}\r\n", plan.target);
    for header in &plan.headers {
        tail.push_str(header);
        tail.push_str("\r\n");
    }
    tail.push_str("\r\n");
    tail.into_bytes()
}

fn write_request(out: &mut Vec<u8>, plan: &Plan, tail: &[u8], random: &mut Xorshift) {
    out.clear();
    out.extend_from_slice(b"GET ");
    match &plan.paths {
        Paths::One(path) => out.extend_from_slice(path.as_bytes()),
        // Written into the buffer: no allocation per request.
        Paths::Objects(count) => {
            let _ = write!(out, "/obj/{}", random.next() % count);
        }
    }
    out.extend_from_slice(tail);
}

/// Whether an idle connection is still open: nothing to read, and no end.
fn is_open(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

enum Progress {
    Partial,
    /// The whole response, on a connection the server kept `open` or closed.
    Complete {
        open: bool,
    },
    Failed,
}

/// Reads what has arrived, through `chunk` (until the socket would block:
/// readiness is edge-triggered, or until the server closes the connection), and
/// tells whether the response is whole.
fn read_response(connection: &mut Connection, chunk: &mut [u8]) -> Progress {
    // A server may close the connection right behind its response.
    let mut open = true;
    loop {
        match connection.stream.read(chunk) {
            Ok(0) => {
                open = false;
                break;
            }
            Ok(n) => connection.read.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Progress::Failed,
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(&connection.read) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if open => return Progress::Partial,
        Ok(httparse::Status::Partial) => return Progress::Failed,
        Err(_) => return Progress::Failed,
    };
    let status = response.code.unwrap_or(0);
    // A server that says it closes the connection gets no further request on it
    // (RFC 9112 §9.6), whether or not its close has arrived yet.
    let says_close = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection")
            && h.value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    });
    let keeps_alive = match response.version {
        Some(1) => !says_close,
        // HTTP/1.0 closes unless asked to keep alive, which no request here does.
        _ => false,
    };
    // A 304 (and any 1xx or 204) has no body; every other answer here carries a
    // Content-Length (none of the servers compared sends a chunked body to these
    // requests).
    let body_len = if status == 304 || status == 204 || status < 200 {
        0
    } else {
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
        match length {
            Some(length) => length,
            None => return Progress::Failed,
        }
    };
    if !(200..400).contains(&status) {
        return Progress::Failed;
    }
    match connection.read.len().cmp(&(head_len + body_len)) {
        std::cmp::Ordering::Less if open => Progress::Partial,
        std::cmp::Ordering::Less => Progress::Failed,
        std::cmp::Ordering::Equal => Progress::Complete {
            open: open && keeps_alive,
        },
        // Bytes beyond the one response asked for: not HTTP/1.1 as spoken here.
        std::cmp::Ordering::Greater => Progress::Failed,
    }
}

/// Counts a request due at `due` (if it was due after the warm-up), answered
/// at `answered`, or failed.
fn count(tally: &mut Tally, due: Instant, counted_from: Instant, answered: Option<Instant>) {
    if due < counted_from {
        return;
    }
    match answered {
        Some(at) => tally
            .latencies
            .push(u64::try_from(at.duration_since(due).as_nanos()).unwrap_or(u64::MAX)),
        None => tally.errors += 1,
    }
}

fn report(mut tally: Tally, duration: Duration) -> String {
    tally.latencies.sort_unstable();
    let at = |q: f64| -> f64 {
        let sorted = &tally.latencies;
        if sorted.is_empty() {
            return 0.0;
        }
        let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index] as f64 / 1_000.0
    };
    let requests = tally.latencies.len();
    format!(
        "requests {requests}\nerrors {}\nrate {:.0}\np50 {:.1}\np90 {:.1}\np99 {:.1}\np99.9 {:.1}\nmax {:.1}\n",
        tally.errors,
        requests as f64 / duration.as_secs_f64(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        at(1.0),
    )
}

/// xorshift64: the paths of `--distinct` need to be spread, not unpredictable.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
