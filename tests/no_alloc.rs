//! Deciding a request allocates nothing: the request is copied into the policy instance's
//! memory and the decision read back into a reused buffer, on the node's own path (one
//! instance per thread, time-bounded engine).
//!
//! A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to the
//! system allocator, so this test binary allows unsafe code for that one impl.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use edgepack_bundles::request::Request;
use edgepack_runtime_min::activation::{Floor, Loader};
use edgepack_runtime_min::host::PolicyEngine;
use edgepack_runtime_min::ratelimit::RateLimits;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn deciding_a_request_allocates_nothing() {
    let path = edgepack_tests::workspace_root().join("examples/global-api");
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let release = edgepack_compiler::pipeline::Release {
        version: 1,
        created: 0,
        expires: None,
    };
    let bundle = edgepack_compiler::pipeline::region_bundle(&path, "eu-west", release, &key)
        .expect("the example builds");
    let loader = Loader::new(
        PolicyEngine::with_time_limit(Duration::from_millis(50), std::sync::Arc::default())
            .expect("engine"),
        vec![key.verifying_key()],
        false,
        Default::default(),
    );
    let floor = Floor {
        mark: None,
        allow_same: false,
        region: None,
        known_good: false,
    };
    let active = loader
        .prepare(&bundle, &floor, 1, &RateLimits::new(100))
        .expect("activates");
    let requests = [
        Request::new("GET", "/api/health")
            .host("api.example.com")
            .header("cf-ipcountry", "DE"),
        Request::new("GET", "/api/data/items?page=2&sort=name")
            .host("api.example.com")
            .header("cf-ipcountry", "DE")
            .header("user-agent", "curl/8.5")
            .header("accept", "application/json"),
        Request::new("POST", "/api/data/items")
            .host("api.example.com")
            .header("cf-ipcountry", "DE")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b"name=a+plain+form&note=nothing+to+see+here"),
        Request::new("POST", "/api/data/items")
            .host("api.example.com")
            .header("cf-ipcountry", "DE")
            .header(
                "content-type",
                "multipart/form-data; boundary=----form7MA4YWx",
            )
            .body(
                b"------form7MA4YWx\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n\
                  a plain form\r\n------form7MA4YWx\r\nContent-Disposition: form-data; \
                  name=\"doc\"; filename=\"notes.txt\"\r\n\r\nnothing to see\r\n\
                  ------form7MA4YWx--\r\n",
            ),
    ];
    for request in &requests {
        // The first call instantiates this thread's instance.
        edgepack_runtime_min::decide::decide(&active, request, |d| d.route).expect("decides");
        let before = allocations();
        for _ in 0..1000 {
            let route = edgepack_runtime_min::decide::decide(&active, request, |d| d.route)
                .expect("decides");
            assert!(route.is_some());
        }
        assert_eq!(
            allocations() - before,
            0,
            "deciding {} {} allocated",
            request.method,
            String::from_utf8_lossy(&request.path)
        );
    }
}
