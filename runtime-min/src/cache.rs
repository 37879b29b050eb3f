//! The response cache for `Cache` effects: in memory, bounded in bytes (moka), with each
//! entry's TTL and stale-while-revalidate window from the policy.
//!
//! The key is host, path and query (GET and HEAD share it; no other method is cached), the
//! values of the route's `vary` headers and its extra key parts; the node builds it, the
//! policy says what goes in. Conditional requests matching a stored response get `304`.
//! A successful unsafe request (a `POST`, `PUT`, `DELETE`, …) removes the entries of its
//! target, every variant (RFC 9111 4.4). The admin endpoint purges entries by host and path
//! prefix. Responses with
//! `Set-Cookie`, `Cache-Control: private` or `no-store`, `Vary: *`, or a status that is not
//! cacheable by default are not stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;

/// A stored response.
pub struct Entry {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: Instant,
    pub fresh_for: Duration,
    pub stale_for: Duration,
    /// Set while one request refreshes this stale entry, so only one does.
    refreshing: AtomicBool,
}

impl Entry {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        fresh_for: Duration,
        stale_for: Duration,
    ) -> Entry {
        Entry {
            status,
            headers,
            body,
            stored_at: Instant::now(),
            fresh_for,
            stale_for,
            refreshing: AtomicBool::new(false),
        }
    }

    /// Seconds since the entry was stored (the `Age` header).
    pub fn age(&self) -> u64 {
        self.stored_at.elapsed().as_secs()
    }

    fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + 256).min(u32::MAX as usize) as u32
    }
}

/// The start of a cache key: the host (lower case, as the request named it), NUL, the path
/// and `?query`; the route's `vary` values and key parts follow, each after a NUL.
pub fn key_head(host: &[u8], path: &str, query: Option<&str>) -> Vec<u8> {
    let mut key = Vec::with_capacity(128);
    key.extend(host.iter().map(u8::to_ascii_lowercase));
    key.push(0);
    key.extend_from_slice(path.as_bytes());
    if let Some(query) = query {
        key.push(b'?');
        key.extend_from_slice(query.as_bytes());
    }
    key
}

/// The length of a key's head (host, path and query), before the parts it varies on.
fn head_len(key: &[u8]) -> usize {
    let Some(host_end) = key.iter().position(|b| *b == 0) else {
        return key.len();
    };
    key[host_end + 1..]
        .iter()
        .position(|b| *b == 0)
        .map_or(key.len(), |at| host_end + 1 + at)
}

/// The keys of stored responses that vary (on request headers or key parts), by their
/// head: what a write to the target removes along with the head itself. Each key is kept
/// with the address of the entry stored under it, so that the removal of an entry the key
/// held before (an expiry noticed late) does not take out the key of a newer one.
type VariantIndex = HashMap<Vec<u8>, Vec<(Vec<u8>, usize)>>;
type Variants = Arc<Mutex<VariantIndex>>;

fn lock(variants: &Variants) -> std::sync::MutexGuard<'_, VariantIndex> {
    variants
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which entries a purge removes: those of `host` (any port; every host when `None`) whose
/// path starts with `prefix`.
pub struct Purge<'a> {
    pub host: Option<&'a str>,
    pub prefix: &'a str,
}

impl Purge<'_> {
    fn matches(&self, key: &[u8]) -> bool {
        let Some(split) = key.iter().position(|b| *b == 0) else {
            return false;
        };
        let (host, target) = (&key[..split], &key[split + 1..]);
        let host_matches = self.host.is_none_or(|wanted| {
            let wanted = wanted.as_bytes();
            host.len() >= wanted.len()
                && host[..wanted.len()].eq_ignore_ascii_case(wanted)
                && (host.len() == wanted.len() || host[wanted.len()] == b':')
        });
        host_matches && target.starts_with(self.prefix.as_bytes())
    }
}

/// What a lookup found.
pub enum Lookup {
    Fresh(Arc<Entry>),
    /// Past its TTL, within stale-while-revalidate; `refresh` is true for the one request
    /// that should fetch a new copy.
    Stale {
        entry: Arc<Entry>,
        refresh: bool,
    },
    Miss,
}

struct EntryExpiry;

impl Expiry<Vec<u8>, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &Vec<u8>,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.fresh_for + value.stale_for)
    }
}

/// The node's response cache.
pub struct ResponseCache {
    entries: Cache<Vec<u8>, Arc<Entry>>,
    /// Kept as entries come and go (an entry's removal takes its key out).
    variants: Variants,
    max_entry: u64,
}

impl ResponseCache {
    pub fn new(max_bytes: u64, max_entry: u64) -> ResponseCache {
        let variants = Variants::default();
        let removed_from = variants.clone();
        ResponseCache {
            entries: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_key: &Vec<u8>, entry: &Arc<Entry>| entry.weight())
                .expire_after(EntryExpiry)
                .eviction_listener(move |key: Arc<Vec<u8>>, entry: Arc<Entry>, cause| {
                    let head = head_len(&key);
                    if cause == RemovalCause::Replaced || head == key.len() {
                        return;
                    }
                    let removed = Arc::as_ptr(&entry) as usize;
                    let mut variants = lock(&removed_from);
                    if let Some(keys) = variants.get_mut(&key[..head]) {
                        keys.retain(|(k, stored)| !(**k == **key && *stored == removed));
                        if keys.is_empty() {
                            variants.remove(&key[..head]);
                        }
                    }
                })
                .build(),
            variants,
            max_entry,
        }
    }

    /// The largest body stored.
    pub fn max_entry(&self) -> u64 {
        self.max_entry
    }

    pub fn lookup(&self, key: &[u8]) -> Lookup {
        let Some(entry) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        let age = entry.stored_at.elapsed();
        if age < entry.fresh_for {
            Lookup::Fresh(entry)
        } else if age < entry.fresh_for + entry.stale_for {
            let refresh = !entry.refreshing.swap(true, Ordering::AcqRel);
            Lookup::Stale { entry, refresh }
        } else {
            Lookup::Miss
        }
    }

    pub fn store(&self, key: Vec<u8>, entry: Entry) {
        if entry.body.len() as u64 > self.max_entry {
            return;
        }
        let entry = Arc::new(entry);
        let head = head_len(&key);
        if head < key.len() {
            let stored = Arc::as_ptr(&entry) as usize;
            let mut variants = lock(&self.variants);
            let keys = variants.entry(key[..head].to_vec()).or_default();
            match keys.iter_mut().find(|(k, _)| *k == key) {
                Some(known) => known.1 = stored,
                None => keys.push((key.clone(), stored)),
            }
        }
        self.entries.insert(key, entry);
    }

    /// Removes every stored response of a target (`head`, from [`key_head`]), whatever it
    /// varies on: after an unsafe request to it succeeded, what is stored may be out of date.
    pub fn invalidate_target(&self, head: &[u8]) {
        self.entries.invalidate(head);
        let varying = lock(&self.variants).remove(head);
        for (key, _) in varying.into_iter().flatten() {
            self.entries.invalidate(&key);
        }
    }

    /// Lets another request refresh a stale entry (after a failed refresh).
    pub fn refresh_failed(&self, key: &[u8]) {
        if let Some(entry) = self.entries.get(key) {
            entry.refreshing.store(false, Ordering::Release);
        }
    }

    /// Removes the entries `purge` matches; returns how many.
    pub fn purge(&self, purge: &Purge) -> u64 {
        let keys: Vec<Arc<Vec<u8>>> = self
            .entries
            .iter()
            .filter(|(key, _)| purge.matches(key))
            .map(|(key, _)| key)
            .collect();
        for key in &keys {
            self.entries.invalidate(key.as_slice());
        }
        keys.len() as u64
    }

    /// Entries stored now (approximate, for tests and metrics).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a response may be stored, whatever the TTL: RFC 9111's heuristically cacheable
/// statuses, not no-store, not no-cache (it may be reused only after revalidation, which
/// this cache does not do), varying only on request headers the key holds (`keyed_on`, the
/// policy's `vary`; never `Vary: *`), and unless the policy stores private responses
/// (`private="store"`), no `Set-Cookie` and not private.
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    store_private: bool,
    keyed_on: &[String],
) -> bool {
    const CACHEABLE: [u16; 10] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 501];
    if !CACHEABLE.contains(&status.as_u16())
        || (!store_private && headers.contains_key(header::SET_COOKIE))
    {
        return false;
    }
    let directives = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            d.trim()
                .split('=')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        });
    for directive in directives {
        if directive == "no-store"
            || directive == "no-cache"
            || (directive == "private" && !store_private)
        {
            return false;
        }
    }
    // A response that varies on a request header the key does not hold could be served to
    // a request it was not made for.
    !headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|name| {
            let name = name.trim_ascii();
            !name.is_empty()
                && !keyed_on
                    .iter()
                    .any(|k| k.as_bytes().eq_ignore_ascii_case(name))
        })
    })
}

/// Whether a conditional GET or HEAD may be answered `304 Not Modified` from a stored
/// response (RFC 9110 13.2.2): `If-None-Match` by weak comparison with the stored `ETag`
/// (`*` matches any), else `If-Modified-Since` against the stored `Last-Modified`.
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let weak = |tag: &[u8]| -> Vec<u8> { tag.strip_prefix(b"W/").unwrap_or(tag).to_vec() };
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored
            .get(header::ETAG)
            .map(|v| weak(v.as_bytes().trim_ascii()))
        else {
            return request
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .any(|v| v.as_bytes().trim_ascii() == b"*");
        };
        return request.get_all(header::IF_NONE_MATCH).iter().any(|value| {
            value.as_bytes().split(|b| *b == b',').any(|tag| {
                let tag = tag.trim_ascii();
                tag == b"*" || weak(tag) == etag
            })
        });
    }
    let date = |map: &HeaderMap, name| {
        map.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    match (
        date(request, header::IF_MODIFIED_SINCE),
        date(stored, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The stored headers a `304` carries (RFC 9110 15.4.5), and `Last-Modified`.
pub const NOT_MODIFIED_HEADERS: [header::HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn entry(body: &'static str, fresh_ms: u64, stale_ms: u64) -> Entry {
        Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body.as_bytes()),
            Duration::from_millis(fresh_ms),
            Duration::from_millis(stale_ms),
        )
    }

    #[test]
    fn fresh_then_stale_with_one_refresher_then_gone() {
        let cache = ResponseCache::new(1 << 20, 1 << 20);
        cache.store(b"k".to_vec(), entry("hello", 40, 200));
        assert!(matches!(cache.lookup(b"k"), Lookup::Fresh(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(
            cache.lookup(b"k"),
            Lookup::Stale { refresh: true, .. }
        ));
        assert!(matches!(
            cache.lookup(b"k"),
            Lookup::Stale { refresh: false, .. }
        ));
        cache.refresh_failed(b"k");
        assert!(matches!(
            cache.lookup(b"k"),
            Lookup::Stale { refresh: true, .. }
        ));
        std::thread::sleep(Duration::from_millis(220));
        assert!(matches!(cache.lookup(b"k"), Lookup::Miss));
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let cache = ResponseCache::new(64 << 10, 8 << 10);
        let body = Bytes::from(vec![b'x'; 4 << 10]);
        for i in 0..100u32 {
            let e = Entry::new(
                StatusCode::OK,
                HeaderMap::new(),
                body.clone(),
                Duration::from_secs(60),
                Duration::ZERO,
            );
            cache.store(i.to_le_bytes().to_vec(), e);
        }
        assert!(
            cache.len() <= 16,
            "{} entries of 4 KiB in 64 KiB",
            cache.len()
        );
        let big = Bytes::from(vec![b'x'; 9 << 10]);
        let e = Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            big,
            Duration::from_secs(60),
            Duration::ZERO,
        );
        cache.store(b"big".to_vec(), e);
        assert!(
            matches!(cache.lookup(b"big"), Lookup::Miss),
            "larger than the entry limit"
        );
    }

    #[test]
    fn private_cookies_and_errors_are_not_stored() {
        let mut headers = HeaderMap::new();
        assert!(storable(StatusCode::OK, &headers, false, &[]));
        assert!(!storable(
            StatusCode::INTERNAL_SERVER_ERROR,
            &headers,
            false,
            &[]
        ));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60, Private"),
        );
        assert!(!storable(StatusCode::OK, &headers, false, &[]));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public"));
        assert!(storable(StatusCode::OK, &headers, false, &[]));
        headers.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        assert!(!storable(StatusCode::OK, &headers, false, &[]));
        assert!(
            storable(StatusCode::OK, &headers, true, &[]),
            "the policy may say so"
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        assert!(storable(StatusCode::OK, &headers, true, &[]));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(
            !storable(StatusCode::OK, &headers, true, &[]),
            "no-store always holds"
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, no-cache=\"x-debug\""),
        );
        assert!(
            !storable(StatusCode::OK, &headers, true, &[]),
            "no-cache needs revalidation, which the cache does not do"
        );
        headers.remove(header::CACHE_CONTROL);
        headers.remove(header::SET_COOKIE);
        headers.insert(header::VARY, HeaderValue::from_static("accept, *"));
        assert!(!storable(
            StatusCode::OK,
            &headers,
            false,
            &["accept".into()]
        ));
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        assert!(
            !storable(StatusCode::OK, &headers, false, &[]),
            "varies on a header the key does not hold"
        );
        assert!(storable(
            StatusCode::OK,
            &headers,
            false,
            &["accept-encoding".into()]
        ));
    }

    #[test]
    fn a_purge_removes_the_entries_of_its_host_and_prefix() {
        let cache = ResponseCache::new(1 << 20, 1 << 16);
        let keys = [
            key_head(b"www.example.com", "/blog/a", None),
            key_head(b"WWW.example.com:8443", "/blog/b", Some("page=2")),
            key_head(b"www.example.com", "/shop/c", None),
            key_head(b"www.example.community", "/blog/d", None),
            key_head(b"api.example.com", "/blog/e", None),
        ];
        let fill = || {
            for key in &keys {
                cache.store(key.clone(), entry("x", 60_000, 0));
            }
        };
        fill();
        let blog = Purge {
            host: Some("www.example.com"),
            prefix: "/blog/",
        };
        assert_eq!(
            cache.purge(&blog),
            2,
            "any port, any query, not another host"
        );
        assert!(matches!(cache.lookup(&keys[0]), Lookup::Miss));
        assert!(matches!(cache.lookup(&keys[1]), Lookup::Miss));
        for kept in &keys[2..] {
            assert!(matches!(cache.lookup(kept), Lookup::Fresh(_)));
        }
        fill();
        let everything = Purge {
            host: None,
            prefix: "/",
        };
        assert_eq!(cache.purge(&everything), 5);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_write_removes_every_variant_of_its_target_and_nothing_else() {
        let cache = ResponseCache::new(1 << 20, 1 << 16);
        let head = key_head(b"api.example.com", "/items/1", None);
        let variant = |encoding: &str| {
            let mut key = head.clone();
            key.extend_from_slice(format!("\0accept-encoding={encoding},").as_bytes());
            key
        };
        let (gzip, plain) = (variant("gzip"), variant(""));
        let other = key_head(b"api.example.com", "/items/1", Some("v=2"));
        let longer = key_head(b"api.example.com", "/items/10", None);
        for key in [&head, &gzip, &plain, &other, &longer] {
            cache.store(key.clone(), entry("x", 60_000, 0));
        }
        cache.invalidate_target(&head);
        for gone in [&head, &gzip, &plain] {
            assert!(matches!(cache.lookup(gone), Lookup::Miss));
        }
        for kept in [&other, &longer] {
            assert!(matches!(cache.lookup(kept), Lookup::Fresh(_)));
        }
        // Stored again, a variant is found by the next write too.
        cache.store(gzip.clone(), entry("y", 60_000, 0));
        cache.invalidate_target(&head);
        assert!(matches!(cache.lookup(&gzip), Lookup::Miss));
        // Entries that leave the cache leave the index of variants.
        cache.store(gzip.clone(), entry("z", 60_000, 0));
        cache.purge(&Purge {
            host: None,
            prefix: "/",
        });
        cache.entries.run_pending_tasks();
        assert!(lock(&cache.variants).is_empty());
    }

    #[test]
    fn a_variant_stored_again_after_it_expired_is_removed_by_the_next_write() {
        let cache = ResponseCache::new(1 << 20, 1 << 16);
        let head = key_head(b"api.example.com", "/items/1", None);
        let mut key = head.clone();
        key.extend_from_slice(b"\0accept-encoding=gzip,");
        cache.store(key.clone(), entry("old", 1, 0));
        std::thread::sleep(Duration::from_millis(20));
        cache.store(key.clone(), entry("new", 60_000, 0));
        cache.entries.run_pending_tasks();
        assert!(matches!(cache.lookup(&key), Lookup::Fresh(_)));
        cache.invalidate_target(&head);
        assert!(matches!(cache.lookup(&key), Lookup::Miss));
    }

    #[test]
    fn conditional_requests_match_the_stored_validators() {
        let stored = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_static(value));
            }
            map
        };
        let tagged = stored(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Mon, 07 Dec 2026 10:00:00 GMT"),
        ]);
        let ask = |name: &'static str, value: &'static str| stored(&[(name, value)]);
        assert!(
            not_modified(&ask("if-none-match", "\"v1\""), &tagged),
            "weak comparison"
        );
        assert!(not_modified(
            &ask("if-none-match", "\"v0\", W/\"v1\""),
            &tagged
        ));
        assert!(not_modified(&ask("if-none-match", "*"), &tagged));
        assert!(!not_modified(&ask("if-none-match", "\"v2\""), &tagged));
        // If-None-Match wins: a date that would match does not count beside it.
        let both = stored(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Tue, 08 Dec 2026 10:00:00 GMT"),
        ]);
        assert!(!not_modified(&both, &tagged));
        assert!(not_modified(
            &ask("if-modified-since", "Mon, 07 Dec 2026 10:00:00 GMT"),
            &tagged
        ));
        assert!(!not_modified(
            &ask("if-modified-since", "Mon, 07 Dec 2026 09:59:59 GMT"),
            &tagged
        ));
        assert!(!not_modified(
            &ask("if-modified-since", "yesterday"),
            &tagged
        ));
        let bare = stored(&[("content-type", "text/plain")]);
        assert!(!not_modified(&ask("if-none-match", "\"v1\""), &bare));
        assert!(!not_modified(
            &ask("if-modified-since", "Mon, 07 Dec 2026 10:00:00 GMT"),
            &bare
        ));
    }
}
