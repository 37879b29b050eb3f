//! `probe`: a handler that does what its path asks, including what a sandbox must stop —
//! trap, spin past its time limit, sleep past it, stall in the middle of its body (at once or
//! late), allocate past its memory limit, call an origin — so the node's end-to-end tests can
//! watch each limit at work.

use std::io::Read;

use handler_io::{header, read_body, respond_error, respond_json};
use serde_json::json;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasip2::http::proxy::export!(Probe);

struct Probe;

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        match path.rsplit('/').next().unwrap_or_default() {
            "echo" => {
                let body = read_body(&request, 1 << 20).unwrap_or_default();
                respond_json(
                    out,
                    200,
                    &json!({
                        "path": path_with_query,
                        "body": String::from_utf8_lossy(&body),
                        "request_id": header(&request, "x-request-id"),
                        "identity": header(&request, "edgepack-identity"),
                        "country": header(&request, "cf-ipcountry"),
                    }),
                )
            }
            "trap" => panic!("the probe was asked to trap"),
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "sleep" => {
                wasip2::clocks::monotonic_clock::subscribe_duration(60_000_000_000).block();
                respond_json(out, 200, &json!({ "slept": true }));
            }
            asked @ ("stall" | "late-stall") => {
                // Answers, writes a little of the body, then never finishes it; `late-stall`
                // answers only after the milliseconds its query gives.
                if asked == "late-stall" {
                    let millis: u64 = query.parse().unwrap_or(0);
                    wasip2::clocks::monotonic_clock::subscribe_duration(
                        millis.saturating_mul(1_000_000),
                    )
                    .block();
                }
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("a new response has a body");
                ResponseOutparam::set(out, Ok(response));
                let stream = body.write().expect("a new body has a stream");
                let _ = stream.blocking_write_and_flush(b"{\"partial\":");
                wasip2::clocks::monotonic_clock::subscribe_duration(60_000_000_000).block();
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                for _ in 0..1024 {
                    hoard.push(vec![1; 1 << 20]);
                }
                respond_json(out, 200, &json!({ "grew_mib": hoard.len() }));
            }
            "fetch" => fetch(out, query),
            _ => respond_error(
                out,
                404,
                "ask for echo, trap, spin, sleep, stall, late-stall, grow or fetch",
            ),
        }
    }
}

/// `fetch?authority=A&path=P`: GET http://A/P and answer what came back.
fn fetch(out: ResponseOutparam, query: &str) {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_string()
    };
    let (authority, path) = (param("authority"), param("path"));
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(&authority));
    let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { &path }));
    if let Ok(body) = request.body() {
        let _ = OutgoingBody::finish(body, None);
    }
    let response = match outgoing_handler::handle(request, None) {
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => response,
                Some(Ok(Err(code))) => {
                    return respond_error(out, 502, &format!("refused or failed: {code:?}"));
                }
                _ => return respond_error(out, 502, "no response"),
            }
        }
        Err(code) => return respond_error(out, 502, &format!("refused or failed: {code:?}")),
    };
    let status = response.status();
    let mut text = String::new();
    if let Ok(body) = response.consume()
        && let Ok(mut stream) = body.stream()
    {
        let _ = stream.read_to_string(&mut text);
    }
    respond_json(
        out,
        200,
        &json!({ "origin_status": status, "origin_body": text }),
    );
}
