//! The upstream servers and the choice among them: least outstanding requests
//! (or round robin), passive health (a server that fails `max_fails` times in a
//! row is out for `fail_timeout`, as in nginx) and optional active checks
//! (`[upstream.health]`).
//!
//! ```
//! use revalidate_cli::serve::balance::{Pool, Server};
//! use revalidate_cli::serve::config::UpstreamSection;
//!
//! let servers = vec![
//!     Server::parse("http://10.0.0.1:5000").unwrap(),
//!     Server::parse("http://10.0.0.2:5000").unwrap(),
//! ];
//! let pool = Pool::new(servers, &UpstreamSection::default());
//! let first = pool.pick(&[]).unwrap();
//! let second = pool.pick(&[first.index()]).unwrap(); // a retry goes elsewhere
//! assert_ne!(first.index(), second.index());
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

use super::config::{Balance, UpstreamSection};

/// One upstream server: where it is, and what is known of its health.
#[derive(Debug)]
pub struct Server {
    scheme: Scheme,
    authority: Authority,
    /// Sent as `Host`: the server's own name, which TLS (SNI) and virtual hosts
    /// expect.
    host: HeaderValue,
    base_path: String,
    /// Requests sent and not yet answered (the response head).
    outstanding: AtomicUsize,
    failures: AtomicU32,
    /// Out of the rotation until this instant (milliseconds since the pool's
    /// start; 0: in).
    out_until: AtomicU64,
    /// The last active check's verdict (true when there are no active checks).
    checked_up: AtomicBool,
}

/// Why an upstream URL was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid upstream {0:?}: expected http://HOST[:PORT][/PATH] or https://…")]
pub struct InvalidUpstream(pub String);

impl Server {
    /// A server at `url`: `http://` or `https://`, host, optional port and base path.
    pub fn parse(url: &str) -> Result<Self, InvalidUpstream> {
        let invalid = || InvalidUpstream(url.to_string());
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(invalid());
        };
        // `http` takes any text after the host's colon and reads no port from text
        // that is not one, and the connector then dials the scheme's default port:
        // a mistyped port is refused here instead.
        let port_text = &authority.as_str()[authority.host().len()..];
        let port_ok = port_text.is_empty() || authority.port_u16().is_some_and(|port| port != 0);
        if (scheme != Scheme::HTTP && scheme != Scheme::HTTPS)
            || authority.as_str().contains('@')
            || uri.query().is_some()
            || !port_ok
        {
            return Err(invalid());
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid())?;
        Ok(Self {
            scheme,
            authority,
            host,
            base_path: uri.path().trim_end_matches('/').to_string(),
            outstanding: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            out_until: AtomicU64::new(0),
            checked_up: AtomicBool::new(true),
        })
    }

    /// The absolute URI of `path_and_query` on this server.
    pub fn target(&self, path_and_query: &str) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.base_path))
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// `host[:port]`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` field sent to it.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Whether it speaks TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

/// The servers, shared by every copy of the upstream client.
#[derive(Debug)]
pub struct Pool {
    servers: Vec<Server>,
    balance: Balance,
    max_fails: u32,
    fail_timeout: Duration,
    turn: AtomicUsize,
    start: Instant,
    /// Whether `[upstream.health]` checks the servers (otherwise every
    /// server's check stays passed).
    actively_checked: bool,
}

/// A server picked for one request; counts as outstanding until dropped.
#[derive(Debug)]
pub struct Picked<'a> {
    pool: &'a Pool,
    index: usize,
}

impl Picked<'_> {
    /// The server.
    pub fn server(&self) -> &Server {
        &self.pool.servers[self.index]
    }

    /// Its position in the pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The server answered (a response head arrived): its failures are forgiven.
    pub fn succeeded(&self) {
        let server = self.server();
        if server.failures.load(Ordering::Relaxed) != 0 {
            server.failures.store(0, Ordering::Relaxed);
        }
    }

    /// The server failed this request (no connection, no head in time, a reset);
    /// at `max_fails` in a row it is out for `fail_timeout`.
    pub fn failed(&self) {
        let server = self.server();
        let failures = server.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.pool.max_fails {
            let until = self.pool.now_ms() + millis(self.pool.fail_timeout);
            server.out_until.store(until, Ordering::Relaxed);
            server.failures.store(0, Ordering::Relaxed);
            tracing::warn!(
                upstream = %server.authority,
                failures,
                fail_timeout = ?self.pool.fail_timeout,
                "upstream server taken out of the rotation"
            );
        }
    }
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.server().outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Pool {
    /// `servers` (at least one), balanced and taken out as `settings` say.
    pub fn new(servers: Vec<Server>, settings: &UpstreamSection) -> Self {
        Self {
            servers,
            balance: settings.balance,
            max_fails: settings.max_fails.max(1),
            fail_timeout: settings.fail_timeout,
            turn: AtomicUsize::new(0),
            start: Instant::now(),
            actively_checked: settings.health.is_some(),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.start.elapsed())
    }

    /// The servers.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Takes over what `old` (the pool a reload replaces) knows of the servers
    /// both name: their failures in a row, the time they are out until, and,
    /// when this pool checks them too, the verdict of their last active check
    /// (without checks, none would ever pass it again). A reload does not put a
    /// server known to be down back in the rotation.
    pub fn inherit_health(&self, old: &Pool) {
        for server in &self.servers {
            let Some(known) = old.servers.iter().find(|known| {
                known.scheme == server.scheme
                    && known.authority == server.authority
                    && known.base_path == server.base_path
            }) else {
                continue;
            };
            server
                .failures
                .store(known.failures.load(Ordering::Relaxed), Ordering::Relaxed);
            if self.actively_checked {
                server
                    .checked_up
                    .store(known.checked_up.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            // Out until the same instant, counted from this pool's start.
            let out_until =
                old.start + Duration::from_millis(known.out_until.load(Ordering::Relaxed));
            let remaining = out_until.saturating_duration_since(Instant::now());
            if !remaining.is_zero() {
                server
                    .out_until
                    .store(self.now_ms() + millis(remaining), Ordering::Relaxed);
            }
        }
    }

    /// Whether `server` is in the rotation: not out after failures, and its last
    /// active check (if any) passed.
    pub fn is_available(&self, server: &Server) -> bool {
        server.checked_up.load(Ordering::Relaxed)
            && server.out_until.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Whether any server is in the rotation (`/readyz`).
    pub fn any_available(&self) -> bool {
        self.servers.iter().any(|s| self.is_available(s))
    }

    /// The server for the next request, other than those in `tried` (the ones
    /// a retry failed on) while there is another. When every server is out, they
    /// are all tried again rather than none: the request fails only if they
    /// still fail.
    pub fn pick(&self, tried: &[usize]) -> Option<Picked<'_>> {
        let count = self.servers.len();
        if count == 0 {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let eligible = |index: usize, healthy_only: bool, untried_only: bool| {
            (!untried_only || !tried.contains(&index))
                && (!healthy_only || self.is_available(&self.servers[index]))
        };
        let choose = |healthy_only: bool, untried_only: bool| -> Option<usize> {
            let order = (0..count).map(|offset| (start + offset) % count);
            let mut eligible = order.filter(|&i| eligible(i, healthy_only, untried_only));
            match self.balance {
                Balance::RoundRobin => eligible.next(),
                // min_by_key keeps the first of equals: the turn breaks ties.
                Balance::LeastOutstanding => {
                    eligible.min_by_key(|&i| self.servers[i].outstanding.load(Ordering::Relaxed))
                }
            }
        };
        // A server that failed this request is worse than one out of the rotation,
        // which failed others a while ago.
        let index = choose(true, true)
            .or_else(|| choose(false, true))
            .or_else(|| choose(true, false))
            .or_else(|| choose(false, false))?;
        self.servers[index]
            .outstanding
            .fetch_add(1, Ordering::Relaxed);
        Some(Picked { pool: self, index })
    }

    /// Runs the active checks of `settings` against every server until the pool
    /// is dropped; `probe` asks one server and says whether it answered 2xx/3xx.
    pub fn check_actively<F, Fut>(self: &Arc<Self>, interval: Duration, probe: F)
    where
        F: Fn(usize) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(count) = pool.upgrade().map(|p| p.servers.len()) else {
                    return;
                };
                for index in 0..count {
                    let up = probe(index).await;
                    let Some(pool) = pool.upgrade() else { return };
                    let server = &pool.servers[index];
                    let was = server.checked_up.swap(up, Ordering::Relaxed);
                    if was != up {
                        if up {
                            tracing::info!(upstream = %server.authority, "upstream server passed its health check");
                        } else {
                            tracing::warn!(upstream = %server.authority, "upstream server failed its health check");
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::config::HealthSection;

    fn pool(balance: Balance, count: usize) -> Pool {
        let servers = (0..count)
            .map(|i| Server::parse(&format!("http://10.0.0.{i}:80")).unwrap())
            .collect();
        Pool::new(
            servers,
            &UpstreamSection {
                balance,
                max_fails: 2,
                ..UpstreamSection::default()
            },
        )
    }

    #[test]
    fn least_outstanding_sends_work_where_it_finishes() {
        let pool = pool(Balance::LeastOutstanding, 3);
        let busy = pool.pick(&[]).unwrap();
        let busy_index = busy.index();
        for _ in 0..6 {
            let next = pool.pick(&[]).unwrap();
            assert_ne!(next.index(), busy_index, "the busy server is skipped");
        }
        drop(busy);
    }

    #[test]
    fn round_robin_takes_turns() {
        let pool = pool(Balance::RoundRobin, 3);
        let picks: Vec<usize> = (0..6).map(|_| pool.pick(&[]).unwrap().index()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn failing_servers_leave_the_rotation_and_a_retry_goes_elsewhere() {
        let pool = pool(Balance::RoundRobin, 2);
        for _ in 0..2 {
            let picked = pool.pick(&[1]).unwrap();
            assert_eq!(picked.index(), 0);
            picked.failed();
        }
        assert!(!pool.is_available(&pool.servers()[0]));
        for _ in 0..4 {
            assert_eq!(pool.pick(&[]).unwrap().index(), 1);
        }
        assert!(pool.any_available());
        // Every server out: they are all tried rather than none.
        for _ in 0..2 {
            pool.pick(&[0]).unwrap().failed();
        }
        assert!(!pool.any_available());
        assert!(pool.pick(&[]).is_some());
        // A retry with one server goes to the same one.
        let single = self::pool(Balance::RoundRobin, 1);
        assert_eq!(single.pick(&[0]).unwrap().index(), 0);
    }

    /// A third try goes to the one server this request has not failed on, with
    /// either balance, though the failed ones hold no requests.
    #[test]
    fn a_retry_avoids_every_server_it_failed_on() {
        for balance in [Balance::LeastOutstanding, Balance::RoundRobin] {
            let pool = pool(balance, 3);
            for _ in 0..6 {
                assert_eq!(pool.pick(&[0, 1]).unwrap().index(), 2, "{balance:?}");
                assert_eq!(pool.pick(&[2, 0]).unwrap().index(), 1, "{balance:?}");
            }
            let all = pool.pick(&[0, 1, 2]).unwrap().index();
            assert!(all < 3, "every server tried: one is tried again");
        }
    }

    /// A reload's pool keeps what the old one knew of a server both name.
    #[test]
    fn a_new_pool_inherits_what_the_old_one_knew() {
        let old = pool(Balance::RoundRobin, 2);
        for _ in 0..2 {
            old.pick(&[1]).unwrap().failed();
        }
        old.servers()[1].checked_up.store(false, Ordering::Relaxed);
        let new = pool(Balance::RoundRobin, 3);
        assert!(new.servers().iter().all(|s| new.is_available(s)));
        new.inherit_health(&old);
        let available: Vec<bool> = new.servers().iter().map(|s| new.is_available(s)).collect();
        assert_eq!(
            available,
            [false, true, true],
            "without checks, none fails one"
        );
        let checked = Pool::new(
            (0..3)
                .map(|i| Server::parse(&format!("http://10.0.0.{i}:80")).unwrap())
                .collect(),
            &UpstreamSection {
                health: Some(HealthSection::default()),
                ..UpstreamSection::default()
            },
        );
        checked.inherit_health(&old);
        let available: Vec<bool> = checked
            .servers()
            .iter()
            .map(|s| checked.is_available(s))
            .collect();
        assert_eq!(available, [false, false, true]);
    }

    #[test]
    fn upstream_urls() {
        for good in [
            "http://a:1",
            "https://a",
            "http://a:1/base/",
            "http://[::1]:8080",
            "http://[::1]",
            "http://a:65535",
        ] {
            assert!(Server::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://a",
            "a:1",
            "http://u@a",
            "http://a/?q",
            "/path",
            "http://a:99999",
            "http://a:5OOO",
            "http://a:",
            "http://a:0",
            "http://[::1]:x",
        ] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
        let server = Server::parse("https://api.example:8443/v1/").unwrap();
        assert_eq!(
            server.target("/users?x=1").to_string(),
            "https://api.example:8443/v1/users?x=1"
        );
        assert!(server.is_https());
    }
}
