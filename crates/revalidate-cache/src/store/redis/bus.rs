//! The invalidation bus: every purge, numbered and in order, from Redis to each
//! instance's local tier, with a lease that says when a local tier may be served.
//!
//! Purges are applied in Redis, then numbered from one counter and appended to
//! a Redis stream by one more script, so the stream holds them in order with no
//! gaps. Each instance reads the stream with a blocking `XREAD`
//! and applies each purge to its local tier. A number that is not the next one
//! (the stream was trimmed past what this instance read, or Redis lost its
//! data) means purges were missed: the local tier is dropped. So is it after
//! every reconnection, since purges made while this instance could not read may
//! never have reached the stream.
//!
//! **Lease.** An instance serves its local tier only while it is *trusted*: its
//! last read returned in time, and then it had applied everything up to when
//! that read was sent. A read that does not return within the lease (Redis gone,
//! a partition, a stalled process) withdraws the trust; lookups then go to Redis
//! or the upstream.
//!
//! **Acknowledgements.** After applying what it read, an instance records in
//! Redis the last stream id it applied and a heartbeat in Redis's own time.
//! The instance that made a purge waits until every live instance acknowledged
//! it, or until the lease of any that did not has surely expired: then no
//! instance serves, from its local tier, anything the purge named.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;
use redis::streams::StreamReadReply;

use super::RedisStore;
use crate::store::Purge;

use crate::store::memory::MemoryStore;

/// Records an instance's last applied stream id and its heartbeat (Redis time).
const ACK: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], ARGV[1], t[1] * 1000 + math.floor(t[2] / 1000))
return 1
";

/// How many live instances (heartbeat within `ARGV[4]` ms) other than `ARGV[1]`
/// have not acknowledged stream id `ARGV[2]-ARGV[3]`; forgets dead ones.
const PENDING: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local beats = redis.call('HGETALL', KEYS[2])
local pending = 0
for i = 1, #beats, 2 do
  local instance, beat = beats[i], tonumber(beats[i + 1])
  if instance ~= ARGV[1] then
    if now - beat > tonumber(ARGV[4]) then
      redis.call('HDEL', KEYS[2], instance)
      redis.call('HDEL', KEYS[1], instance)
    else
      local ack = redis.call('HGET', KEYS[1], instance) or '0-0'
      local ms, seq = string.match(ack, '(%d+)-(%d+)')
      ms, seq = tonumber(ms), tonumber(seq)
      local want_ms, want_seq = tonumber(ARGV[2]), tonumber(ARGV[3])
      if ms < want_ms or (ms == want_ms and seq < want_seq) then pending = pending + 1 end
    end
  end
end
return pending
";

/// What the bus of one instance shares with its tiered store.
#[derive(Debug)]
pub(crate) struct BusState {
    /// This instance's name on the bus.
    pub(crate) instance: String,
    /// Until when the local tier may be served, in nanoseconds after
    /// [`BusState::epoch`]: the start of the last read that caught up, plus the
    /// lease. Readers compare it with the clock themselves, so a bus task that
    /// stalls cannot leave the tier trusted.
    trusted_until: AtomicU64,
    /// What `trusted_until` counts from.
    epoch: Instant,
    /// The number of the last purge applied to the local tier.
    pub(crate) applied: AtomicU64,
    /// Advances whenever the bus removes anything from the local tier (a purge
    /// applied, the tier dropped); a store into the tier is refused if it moved
    /// since its fetch began (see `MemoryStore::put_if_unchanged`).
    pub(crate) generation: AtomicU64,
    /// How long a read may take before the local tier stops being served.
    pub(crate) lease: Duration,
    /// Purges Redis could not take when they were made; the local tier is not
    /// served until they are sent.
    pub(crate) unsent: Mutex<Vec<Purge>>,
    /// Times the local tier was dropped (missed purges, reconnections).
    pub(crate) drops: AtomicU64,
    /// Writes whose wait for acknowledgements ran out (some instance was fenced).
    pub(crate) fenced_waits: AtomicU64,
}

impl BusState {
    pub(crate) fn new(lease: Duration) -> Self {
        let instance = format!(
            "{:016x}",
            twox_hash::XxHash3_64::oneshot(
                format!("{:?}{}", Instant::now(), std::process::id()).as_bytes()
            ) ^ u64::from(std::process::id())
        );
        Self {
            instance,
            trusted_until: AtomicU64::new(0),
            epoch: Instant::now(),
            applied: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            lease,
            unsent: Mutex::new(Vec::new()),
            drops: AtomicU64::new(0),
            fenced_waits: AtomicU64::new(0),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the local tier may be served now.
    pub(crate) fn trusted(&self) -> bool {
        self.nanos(Instant::now()) < self.trusted_until.load(Ordering::Acquire)
    }

    /// Stops serving the local tier until the bus reads again.
    pub(crate) fn distrust(&self) {
        self.trusted_until.store(0, Ordering::Release);
    }

    /// Trusts the local tier until `lease` after `sent`, when a read sent then
    /// caught up and nothing is waiting to be sent.
    fn trust_from(&self, sent: Instant) {
        let unsent = !self
            .unsent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if unsent {
            self.distrust();
        } else {
            self.trusted_until
                .store(self.nanos(sent + self.lease), Ordering::Release);
        }
    }

    /// The generation a fetch starting now compares its store with.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Waits (at most a lease) until this instance's bus applied purge `number`:
    /// then whatever the local tier took from Redis before the purge is gone.
    pub(crate) async fn applied_here(&self, number: u64) {
        let deadline = Instant::now() + self.lease + self.lease / 4;
        let mut pause = Duration::from_micros(100);
        while self.applied.load(Ordering::Acquire) < number && self.trusted() {
            if Instant::now() >= deadline {
                self.distrust();
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    /// Drops the local tier.
    fn drop_local(&self, local: &MemoryStore) {
        local.clear_advancing(&self.generation);
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// A stream id's two numbers.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Waits until every live instance applied the purge with stream id `id`, or
/// until any that did not has lost its lease. Returns whether all acknowledged.
pub(crate) async fn wait_for_acknowledgements(
    shared: &RedisStore,
    state: &BusState,
    id: &str,
) -> bool {
    let script = Script::new(PENDING);
    let (ms, seq) = stream_id(id);
    // A lease is measured from a read's start on the instance's own clock; a
    // quarter more covers scheduling and clock-rate differences.
    let deadline = Instant::now() + state.lease + state.lease / 4;
    let mut pause = Duration::from_micros(200);
    loop {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(shared.bus_key("acks"))
            .key(shared.bus_key("beats"))
            .arg(&state.instance)
            .arg(ms)
            .arg(seq)
            // An instance whose last read is older than its lease (and a quarter,
            // for differences in clock rates) can no longer serve its local tier.
            .arg(u64::try_from((state.lease + state.lease / 4).as_millis()).unwrap_or(u64::MAX));
        let mut connection = shared.connection();
        let pending: Option<u64> = shared
            .run("pending", invocation.invoke_async(&mut connection))
            .await;
        if pending == Some(0) {
            return true;
        }
        if Instant::now() >= deadline {
            state.fenced_waits.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                ?pending,
                "purge not acknowledged by every instance within the lease; they no longer serve their local tier"
            );
            return false;
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Reads the bus for as long as the store that made `state` lives, applying
/// purges to `local`.
pub(crate) async fn run(state: Arc<BusState>, shared: RedisStore, local: MemoryStore) {
    let ack = Script::new(ACK);
    let mut backoff = Duration::from_millis(50);
    // Only the store keeps the state alive: when it is gone, so is the bus.
    while Arc::strong_count(&state) > 1 {
        state.distrust();
        let connecting = shared.client().dedicated(state.lease);
        let mut connection = match tokio::time::timeout(state.lease, connecting).await {
            Ok(Ok(connection)) => connection,
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if !send_unsent(&shared, &state).await {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        let Some((mut last_id, number)) = read_position(&shared, &mut connection).await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(50);
        // What happened while this instance could not read is unknown: the local
        // tier starts again from here, and stores of fetches that began before
        // are refused (see `BusState::may_store_locally`).
        state.drop_local(&local);
        state.applied.store(number, Ordering::Release);
        let bus = shared.bus_key("bus");
        // Reads return at least four times a lease, so that a Redis slow by less
        // than half a lease never lets the lease lapse.
        let block = state.lease / 4;
        while Arc::strong_count(&state) > 1 {
            // Purges made while Redis did not answer are sent before the local
            // tier is trusted again.
            if !send_unsent(&shared, &state).await {
                break;
            }
            let sent = Instant::now();
            let mut command = redis::cmd("XREAD");
            command
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
                .arg("STREAMS")
                .arg(&bus)
                .arg(&last_id);
            let read = command.query_async::<Option<StreamReadReply>>(&mut connection);
            let reply = match tokio::time::timeout(state.lease, read).await {
                Ok(Ok(reply)) => reply,
                _ => break,
            };
            let mut count = 0;
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for message in key.ids {
                    count += 1;
                    let number: Option<u64> = message.get("number");
                    let purge: Option<String> = message.get("purge");
                    apply(&state, &local, number, purge.as_deref());
                    last_id = message.id;
                }
            }
            let mut invocation = ack.prepare_invoke();
            invocation
                .key(shared.bus_key("acks"))
                .key(shared.bus_key("beats"))
                .arg(&state.instance)
                .arg(&last_id);
            let acked = tokio::time::timeout(
                shared.config().timeout.max(block),
                invocation.invoke_async::<u8>(&mut connection),
            )
            .await;
            if !matches!(acked, Ok(Ok(_))) {
                break;
            }
            // Caught up as of `sent` (a full batch may have more behind it), and
            // the lease runs from there.
            if count < BATCH {
                state.trust_from(sent);
            }
        }
        state.distrust();
        tracing::warn!(
            "invalidation bus disconnected; the local tier is not served until it reconnects"
        );
    }
}

/// Messages read at once.
const BATCH: usize = 1000;

/// The stream's last id and the purge count, read when (re)connecting.
async fn read_position(
    shared: &RedisStore,
    connection: &mut super::connection::Connection,
) -> Option<(String, u64)> {
    let bus = shared.bus_key("bus");
    let purges = shared.bus_key("purges");
    let mut pipe = redis::pipe();
    pipe.cmd("XREVRANGE")
        .arg(&bus)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .cmd("GET")
        .arg(&purges);
    let read = pipe.query_async::<(redis::streams::StreamRangeReply, Option<u64>)>(connection);
    let (range, number) = tokio::time::timeout(
        shared.config().timeout.max(Duration::from_millis(200)),
        read,
    )
    .await
    .ok()?
    .ok()?;
    let id = range
        .ids
        .first()
        .map_or_else(|| "0-0".to_string(), |m| m.id.clone());
    Some((id, number.unwrap_or(0)))
}

/// Sends purges that Redis could not take when they were made.
async fn send_unsent(shared: &RedisStore, state: &BusState) -> bool {
    let unsent = std::mem::take(&mut *state.unsent.lock().unwrap_or_else(|e| e.into_inner()));
    if unsent.is_empty() {
        return true;
    }
    for (i, purge) in unsent.iter().enumerate() {
        if shared.apply_purge(purge).await.is_none() {
            let mut kept = state.unsent.lock().unwrap_or_else(|e| e.into_inner());
            kept.extend(unsent[i..].iter().cloned());
            return false;
        }
    }
    true
}

/// Applies one purge from the stream to the local tier; drops the tier when its
/// number shows purges were missed.
fn apply(state: &BusState, local: &MemoryStore, number: Option<u64>, purge: Option<&str>) {
    let purge = purge.and_then(|p| serde_json::from_str::<Purge>(p).ok());
    let (Some(number), Some(purge)) = (number, purge) else {
        tracing::warn!("unreadable message on the invalidation bus; dropping the local tier");
        state.drop_local(local);
        return;
    };
    let applied = state.applied.load(Ordering::Acquire);
    if number != applied + 1 {
        tracing::warn!(
            expected = applied + 1,
            got = number,
            "purges missed on the invalidation bus; dropping the local tier"
        );
        state.drop_local(local);
    } else {
        local.purge_advancing(&purge, &state.generation);
    }
    state.applied.store(number, Ordering::Release);
}
