//! The bytes a stored response takes in Redis: one value per primary key holding
//! all its variants.
//!
//! Written by hand because what it encodes is the cache's own entry (header
//! names and values, times, the `Vary` selection), which no serde data model
//! holds without a copy of every field, and because decoding slices the body out
//! of the value Redis returned instead of copying it.
//!
//! Layout (integers big-endian): a format byte, a flags byte (bit 0: soft-purged,
//! at [`FLAGS_OFFSET`] so that a purge can set it in place with `SETRANGE`), the
//! `Vary` names, then each entry. A value that does not decode (another format, a
//! truncated value) is a miss, never an error to the client.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::entry::{StoredResponse, Timing, Variants};
use crate::key::Secondary;

/// The format this build writes and reads.
const FORMAT: u8 = 1;
/// Where the flags byte is.
pub(super) const FLAGS_OFFSET: usize = 1;
/// The flags byte's soft-purge bit.
pub(super) const SOFT_PURGED: u8 = 1;

const ALWAYS_REVALIDATE: u8 = 1;
const FORBIDS_STALE: u8 = 2;
/// This entry (one variant) was soft-purged.
const ENTRY_SOFT_PURGED: u8 = 4;

/// The value for `variants`.
pub(super) fn encode(variants: &Variants) -> Bytes {
    let entries = variants.entries();
    let size: usize = entries
        .iter()
        .map(|e| e.body.len() + e.fields().byte_len() + 128)
        .sum();
    let mut out = BytesMut::with_capacity(size + 16);
    out.put_u8(FORMAT);
    // The value's flag is the purge script's, for all variants at once; a
    // variant soft-purged here carries its own.
    out.put_u8(0);
    put_len(&mut out, variants.vary().len());
    for name in variants.vary() {
        put_bytes(&mut out, name.as_str().as_bytes());
    }
    put_len(&mut out, entries.len());
    for entry in entries {
        put_entry(&mut out, entry);
    }
    out.freeze()
}

fn put_entry(out: &mut BytesMut, entry: &StoredResponse) {
    out.put_u16(entry.status.as_u16());
    // The request's time is not kept: the initial age computed from it when the
    // response arrived travels as it is, and the response's time stands in.
    out.put_u64(micros_since_epoch(entry.response_time()));
    out.put_u64(micros_since_epoch(entry.response_time()));
    for duration in [
        entry.lifetime(),
        entry.initial_age(),
        entry.stale_while_revalidate(),
        entry.stale_if_error(),
    ] {
        out.put_u64(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }
    let mut flags = 0;
    if entry.always_revalidate() {
        flags |= ALWAYS_REVALIDATE;
    }
    if entry.forbids_stale() {
        flags |= FORBIDS_STALE;
    }
    if entry.is_soft_purged() {
        flags |= ENTRY_SOFT_PURGED;
    }
    out.put_u8(flags);
    put_len(out, entry.fields().len());
    for (name, value) in entry.fields().iter() {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
    put_len(out, entry.secondary().names.len());
    for (name, value) in entry
        .secondary()
        .names
        .iter()
        .zip(&entry.secondary().values)
    {
        put_bytes(out, name.as_str().as_bytes());
        match value {
            Some(value) => {
                out.put_u8(1);
                put_bytes(out, value.as_bytes());
            }
            None => out.put_u8(0),
        }
    }
    put_len(out, entry.tags().len());
    for tag in entry.tags() {
        put_bytes(out, tag.as_bytes());
    }
    put_bytes(out, entry.path().as_bytes());
    put_bytes(out, &entry.body);
}

/// The variants a value stored under `primary` holds; `None` when it does not
/// decode, or when the path it holds is not `primary`'s.
pub(super) fn decode(primary: &str, mut value: Bytes) -> Option<Variants> {
    let key: Arc<str> = Arc::from(primary);
    if value.remaining() < 2 || value.get_u8() != FORMAT {
        return None;
    }
    let soft = value.get_u8() & SOFT_PURGED != 0;
    let vary = (0..get_len(&mut value)?)
        .map(|_| HeaderName::from_bytes(&get_bytes(&mut value)?).ok())
        .collect::<Option<Vec<_>>>()?;
    let count = get_len(&mut value)?;
    let mut entries = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let (entry, entry_soft) = get_entry(&mut value, &key)?;
        if soft || entry_soft {
            entry.soft_purge();
        }
        entries.push(Arc::new(entry));
    }
    (!entries.is_empty() && (!vary.is_empty() || entries.len() == 1))
        .then(|| Variants::new(vary, entries))
}

/// An entry, and whether it was soft-purged on its own.
fn get_entry(value: &mut Bytes, key: &Arc<str>) -> Option<(StoredResponse, bool)> {
    if value.remaining() < 2 + 8 * 6 + 1 {
        return None;
    }
    let status = StatusCode::from_u16(value.get_u16()).ok()?;
    let request_time = UNIX_EPOCH + Duration::from_micros(value.get_u64());
    let response_time = UNIX_EPOCH + Duration::from_micros(value.get_u64());
    let mut durations = [Duration::ZERO; 4];
    for duration in &mut durations {
        *duration = Duration::from_micros(value.get_u64());
    }
    let [
        lifetime,
        initial_age,
        stale_while_revalidate,
        stale_if_error,
    ] = durations;
    let flags = value.get_u8();
    let mut headers = HeaderMap::new();
    for _ in 0..get_len(value)? {
        let name = HeaderName::from_bytes(&get_bytes(value)?).ok()?;
        let value = HeaderValue::from_maybe_shared(get_bytes(value)?).ok()?;
        headers.append(name, value);
    }
    let mut secondary = Secondary::default();
    for _ in 0..get_len(value)? {
        secondary
            .names
            .push(HeaderName::from_bytes(&get_bytes(value)?).ok()?);
        let present = value.has_remaining().then(|| value.get_u8())?;
        secondary.values.push(match present {
            0 => None,
            _ => Some(String::from_utf8(get_bytes(value)?.to_vec()).ok()?),
        });
    }
    let tags = (0..get_len(value)?)
        .map(|_| String::from_utf8(get_bytes(value)?.to_vec()).ok())
        .collect::<Option<Vec<_>>>()?;
    // The path is written for the store's scripts (and for readers of the value);
    // the entry reads it from its key.
    if get_bytes(value)? != crate::key::target_of(key).as_bytes() {
        return None;
    }
    let body = get_bytes(value)?;
    let timing = Timing {
        request_time,
        response_time,
        lifetime,
        stale_while_revalidate,
        stale_if_error,
        always_revalidate: flags & ALWAYS_REVALIDATE != 0,
        forbids_stale: flags & FORBIDS_STALE != 0,
    };
    // The stored fields hold no `Age`: the age computed when it was first stored
    // is carried over as it was.
    let entry = StoredResponse::new(status, headers, body, timing, secondary, tags, key.clone())
        .with_initial_age(initial_age);
    Some((entry, flags & ENTRY_SOFT_PURGED != 0))
}

fn micros_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn put_len(out: &mut BytesMut, len: usize) {
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.put_slice(bytes);
}

fn get_len(value: &mut Bytes) -> Option<usize> {
    (value.remaining() >= 4).then(|| value.get_u32() as usize)
}

fn get_bytes(value: &mut Bytes) -> Option<Bytes> {
    let len = get_len(value)?;
    (value.remaining() >= len).then(|| value.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vary_value: Option<&str>, body: &'static str) -> Arc<StoredResponse> {
        let mut headers = HeaderMap::new();
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
        headers.append("set-thing", HeaderValue::from_static("a"));
        headers.append("set-thing", HeaderValue::from_static("b"));
        headers.insert("age", HeaderValue::from_static("30"));
        let now = SystemTime::now();
        let timing = Timing {
            request_time: now - Duration::from_millis(5),
            response_time: now,
            lifetime: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(300),
            always_revalidate: false,
            forbids_stale: true,
        };
        let secondary = Secondary {
            names: vec![HeaderName::from_static("accept-language")],
            values: vec![vary_value.map(str::to_string)],
        };
        Arc::new(StoredResponse::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(body.as_bytes()),
            timing,
            secondary,
            vec!["user:1".into(), "users".into()],
            Arc::from(KEY),
        ))
    }

    const KEY: &str = "api.test/users/1";

    #[test]
    fn what_is_decoded_is_what_was_encoded() {
        let variants = Variants::new(
            vec![HeaderName::from_static("accept-language")],
            vec![entry(Some("de"), "hallo"), entry(None, "hello")],
        );
        let decoded = decode(KEY, encode(&variants)).expect("decodes");
        assert_eq!(decoded.vary(), variants.vary());
        assert_eq!(decoded.entries().len(), 2);
        for (a, b) in variants.entries().iter().zip(decoded.entries()) {
            assert_eq!(a.status, b.status);
            assert_eq!(a.headers(), b.headers());
            assert_eq!(a.body, b.body);
            assert_eq!(a.secondary(), b.secondary());
            assert_eq!(a.tags(), b.tags());
            assert_eq!((a.key(), b.path()), (b.key(), "/users/1"));
            assert_eq!(
                a.initial_age(),
                b.initial_age(),
                "the upstream's Age is kept"
            );
            assert_eq!(a.lifetime(), b.lifetime());
            assert_eq!(a.stale_if_error(), b.stale_if_error());
            assert_eq!(a.forbids_stale(), b.forbids_stale());
            let micros = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_micros();
            assert_eq!(micros(a.response_time()), micros(b.response_time()));
            assert!(!b.is_soft_purged());
        }
    }

    #[test]
    fn the_soft_purge_flag_is_one_byte_in_place() {
        let variants = Variants::new(Vec::new(), vec![entry(None, "x")]);
        let mut value = BytesMut::from(&encode(&variants)[..]);
        value[FLAGS_OFFSET] |= SOFT_PURGED;
        let decoded = decode(KEY, value.freeze()).expect("decodes");
        assert!(decoded.entries()[0].is_soft_purged());
    }

    /// One soft-purged variant stays the only one marked.
    #[test]
    fn a_soft_purged_variant_marks_only_itself() {
        let stale = entry(Some("de"), "hallo");
        stale.soft_purge();
        let variants = Variants::new(
            vec![HeaderName::from_static("accept-language")],
            vec![stale, entry(None, "hello")],
        );
        let decoded = decode(KEY, encode(&variants)).expect("decodes");
        assert!(decoded.entries()[0].is_soft_purged());
        assert!(!decoded.entries()[1].is_soft_purged());
    }

    #[test]
    fn anything_else_is_a_miss() {
        let value = encode(&Variants::new(Vec::new(), vec![entry(None, "x")]));
        for cut in 0..value.len() {
            assert!(decode(KEY, value.slice(..cut)).is_none(), "cut at {cut}");
        }
        assert!(
            decode(KEY, Bytes::from_static(b"\x02\x00")).is_none(),
            "another format"
        );
        assert!(
            decode("api.test/users/2", value).is_none(),
            "a value under another key than the one it was stored under"
        );
    }
}
