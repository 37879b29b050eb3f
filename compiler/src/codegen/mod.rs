//! Code generation: a region plan → a core Wasm policy module (ABI v1, see docs/abi.md).
//!
//! The policy lives in data: route tries, automata, country sets, ranges and per-route
//! records laid out in one data segment; a small amount of generated code walks them. Code
//! is emitted only for what the plan uses (no geo, no geo code; no WAF, no WAF code), and
//! table addresses are constants in the code. The module imports nothing (but the host's
//! libinjection `detect` when a WAF rule uses it), keeps no state
//! between calls (everything it writes it resets first), and never allocates.
//!
//! Generation is in three steps: lay out every table ([`Data`]), fix the addresses of the
//! decision, scratch and request areas after them, then write the functions.

mod asm;
pub mod automata;
mod funcs;
mod routes;
mod waf;

use edgepack_bundles::abi::{self, answer, dec, effect, flag, method, req};

use crate::plan::*;
use asm::{Asm, Data, I32, I64, mem};
use funcs::{Funcs, ModuleParts};

pub use automata::AutomatonError;

/// Why a plan could not be compiled (an automaton over its budget, or a bug).
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error(transparent)]
    Automaton(#[from] AutomatonError),
}

/// Where the runtime areas of the module's memory are.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub decision: u32,
    /// Prefilter hit bits for the value as received, and for a decoded copy.
    pub hits: u32,
    pub hits_decoded: u32,
    /// Prefilter hit bits for the output of a decoding chain's first step.
    pub hits_first: u32,
    /// The prefilter's generation word, then one word per action state: the generation
    /// that last applied it (see `waf::prefilter_body`).
    pub prefilter_stamps: u32,
    /// One byte per WAF rule (fired in this request), then per further condition of a
    /// compound rule.
    pub fired: u32,
    pub scratch_a: u32,
    pub scratch_b: u32,
    /// The output of a decoding chain's first step, shared by chains starting alike.
    pub scratch_first: u32,
    /// The thread sets of sequence matchers (see `waf::sequence_area`).
    pub threads: u32,
    pub request: u32,
    pub request_capacity: u32,
    pub end: u32,
}

/// Emits the policy module for a plan.
pub fn emit(plan: &RegionPlan) -> Result<Vec<u8>, CodegenError> {
    let mut data = Data::new(1024);
    let body_limit = plan.waf.as_ref().map_or(0, |w| w.body_limit);
    let request_capacity = abi::REQUEST_CAPACITY_BASE + body_limit;

    // 1. Tables.
    let common = CommonTables::new(plan, &mut data);
    let route_tables = routes::Tables::new(plan, &mut data);
    let waf_tables = match &plan.waf {
        Some(waf) => Some(waf::Tables::new(waf, &mut data)?),
        None => None,
    };

    // 2. Runtime areas after the tables.
    data.align(16);
    let mut end = data.here();
    let mut area = |size: u32| {
        let at = end;
        end = (end + size + 15) & !15;
        at
    };
    let decision = area(dec::SIZE);
    let hit_bytes = waf_tables.as_ref().map_or(0, |w| w.hit_words * 8);
    let slot_count = waf_tables.as_ref().map_or(0, |w| w.slot_count);
    let layout = Layout {
        decision,
        hits: area(hit_bytes),
        hits_decoded: area(hit_bytes),
        hits_first: area(hit_bytes),
        prefilter_stamps: area(waf_tables.as_ref().map_or(0, |w| w.prefilter_stamp_bytes())),
        fired: area(slot_count),
        scratch_a: if waf_tables.is_some() {
            area(request_capacity)
        } else {
            0
        },
        scratch_b: if waf_tables.is_some() {
            area(request_capacity)
        } else {
            0
        },
        scratch_first: if waf_tables.is_some() {
            area(request_capacity)
        } else {
            0
        },
        threads: match waf_tables
            .as_ref()
            .map_or((0, 0), |w| (w.sequence_states, w.middle_states))
        {
            (0, _) => 0,
            (tail, middle) => area(waf::sequence_area(tail, middle)),
        },
        request: area(request_capacity),
        request_capacity,
        end: 0,
    };
    // Slack past the request: decoders may peek a byte or two beyond a value.
    let layout = Layout {
        end: end + 64,
        ..layout
    };

    // 3. Functions.
    let mut funcs = Funcs::new();
    // Imports take the first function indices: declared before anything else.
    let detect = waf_tables.as_ref().filter(|t| t.uses_detect).map(|_| {
        funcs.import(
            abi::import::MODULE,
            abi::import::DETECT,
            &[I32, I32, I32],
            &[I32],
        )
    });
    let util = Util::declare(&mut funcs);
    let route_fns = routes::Fns::declare(&mut funcs);
    let waf_fns = waf_tables
        .as_ref()
        .map(|t| waf::Fns::declare(&mut funcs, t, detect));
    let decide = funcs.declare(&[I32], &[I32]);
    util.define(&mut funcs, &layout, &common);
    route_fns.define(&mut funcs, &layout, &route_tables, &util);
    if let (Some(fns), Some(tables), Some(waf)) = (&waf_fns, &waf_tables, &plan.waf) {
        let _ = waf;
        fns.define(&mut funcs, &layout, tables, &util);
    }
    let body = decide_body(
        plan,
        &layout,
        &common,
        &route_tables,
        &util,
        &route_fns,
        waf_fns.as_ref(),
    );
    funcs.define(decide, body);

    let pages = u64::from(layout.end.div_ceil(65536)).max(1);
    Ok(funcs::encode(
        funcs,
        ModuleParts {
            pages,
            data_base: data.base,
            data: data.bytes,
            decide,
            globals: vec![
                (abi::export::ABI_VERSION, abi::ABI_VERSION),
                (abi::export::REQUEST_BASE, layout.request),
                (abi::export::REQUEST_CAPACITY, layout.request_capacity),
                (abi::export::DECISION_BASE, layout.decision),
                (abi::export::BODY_LIMIT, body_limit),
            ],
        },
    ))
}

/// Index of a country code in 26×26 tables.
fn country_index(code: &str) -> Option<usize> {
    let b = code.as_bytes();
    (b.len() == 2 && b[0].is_ascii_uppercase() && b[1].is_ascii_uppercase())
        .then(|| (b[0] - b'A') as usize * 26 + (b[1] - b'A') as usize)
}

/// Tables for geo, zones, CORS and residency.
struct CommonTables {
    /// 676 bytes: the zone of each country (index by `country_index`).
    zone_of: u32,
    global_zone: u32,
    /// [count, then (net, mask) 16+16 bytes each]; 0 when there are no trusted peers.
    trusted: u32,
    country_header: Option<(u32, u32)>,
    block: Option<(u32, u16)>,
    allow: Option<(u32, u16)>,
    /// [count, then (start_hi, start_lo, end_hi, end_lo: u64, country: u32, pad)], or 0.
    ranges: u32,
    /// For each CORS policy: address of [wildcard, count, (ptr, len)...].
    cors: u32,
    /// One byte per zone: has residency transforms.
    residency: u32,
    /// 256-byte table: bits saying which bytes a redirect location keeps as they are
    /// (`KEEP_IN_SEGMENT`, `KEEP_IN_QUERY`).
    keep: u32,
    hex: u32,
    origin_name: (u32, u32),
}

impl CommonTables {
    fn new(plan: &RegionPlan, data: &mut Data) -> CommonTables {
        let global_zone = plan.global_zone();
        let mut zone_of = vec![global_zone as u8; 676];
        for (zone, countries) in plan.zone_countries.iter().enumerate() {
            for country in countries {
                if let Some(i) = country_index(country) {
                    zone_of[i] = zone as u8;
                }
            }
        }
        let zone_of = data.bytes(&zone_of);
        let mut set = |countries: &[String]| {
            let mut bits = [0u8; 88];
            for c in countries {
                if let Some(i) = country_index(c) {
                    bits[i / 8] |= 1 << (i % 8);
                }
            }
            data.bytes(&bits)
        };
        let geo = plan.geo.as_ref();
        let block = geo
            .and_then(|g| g.block.as_ref())
            .map(|l| (set(&l.countries), l.status));
        let allow = geo
            .and_then(|g| g.allow.as_ref())
            .map(|l| (set(&l.countries), l.status));
        let country_header = geo
            .and_then(|g| g.country_header.as_ref())
            .map(|h| (data.bytes(h.as_bytes()), h.len() as u32));
        let trusted = match geo {
            Some(g) if !g.trusted_peers.is_empty() => {
                let nets: Vec<ipnet::IpNet> = g
                    .trusted_peers
                    .iter()
                    .filter_map(|n| n.parse().ok())
                    .collect();
                data.align(8);
                let at = data.words(&[nets.len() as u32, 0]);
                for net in nets {
                    let (addr, prefix) = match net {
                        ipnet::IpNet::V4(n) => (
                            std::net::IpAddr::V4(n.network()),
                            u32::from(n.prefix_len()) + 96,
                        ),
                        ipnet::IpNet::V6(n) => {
                            (std::net::IpAddr::V6(n.network()), u32::from(n.prefix_len()))
                        }
                    };
                    let mask: u128 = if prefix == 0 {
                        0
                    } else {
                        u128::MAX << (128 - prefix)
                    };
                    data.bytes(&edgepack_bundles::request::ip_bytes(addr));
                    data.bytes(&mask.to_be_bytes());
                }
                at
            }
            _ => 0,
        };
        let ranges = match geo {
            Some(g) if !g.ranges.is_empty() => {
                data.align(8);
                let at = data.words(&[g.ranges.len() as u32, 0]);
                for r in &g.ranges {
                    let start = u128::from_be_bytes(r.start);
                    let end = u128::from_be_bytes(r.end);
                    let code = country_index(&r.country).map_or(0, |_| {
                        let b = r.country.as_bytes();
                        u32::from(b[0]) | u32::from(b[1]) << 8
                    });
                    for v in [
                        (start >> 64) as u64,
                        start as u64,
                        (end >> 64) as u64,
                        end as u64,
                    ] {
                        data.bytes(&v.to_le_bytes());
                    }
                    data.words(&[code, 0]);
                }
                at
            }
            _ => 0,
        };
        let cors_entries: Vec<u32> = plan
            .cors
            .iter()
            .map(|c| {
                let strings: Vec<(u32, u32)> = c
                    .origins
                    .iter()
                    .map(|o| (data.bytes(o.as_bytes()), o.len() as u32))
                    .collect();
                let mut words = vec![
                    u32::from(c.origins.iter().any(|o| o == "*")),
                    strings.len() as u32,
                ];
                for (p, l) in strings {
                    words.extend([p, l]);
                }
                data.words(&words)
            })
            .collect();
        let cors = data.words(&cors_entries);
        let mut residency = vec![0u8; plan.zones.len()];
        for r in &plan.residency {
            residency[r.zone as usize] = 1;
        }
        let residency = data.bytes(&residency);
        let keep: Vec<u8> = (0..=255u8)
            .map(|b| {
                (u8::from(crate::eval::keep_in_location(b)) * KEEP_IN_SEGMENT)
                    | (u8::from(crate::eval::keep_in_query(b)) * KEEP_IN_QUERY)
            })
            .collect();
        let keep = data.bytes(&keep);
        let hex = data.bytes(b"0123456789ABCDEF");
        let origin_name = (data.bytes(b"origin"), 6);
        CommonTables {
            zone_of,
            global_zone,
            trusted,
            country_header,
            block,
            allow,
            ranges,
            cors,
            residency,
            keep,
            hex,
            origin_name,
        }
    }
}

/// Helper functions every module may use.
pub(crate) struct Util {
    /// `memeq(a, b, len) -> i32`
    pub memeq: u32,
    /// `name_is(ptr, len, name, name_len) -> i32`: the bytes are exactly the name.
    pub name_is: u32,
    /// `name_has(ptr, len, needle, needle_len) -> i32`: the bytes contain the needle.
    pub name_has: u32,
    /// `find_header(name, len) -> record address or 0`
    pub find_header: u32,
    /// `ip_in_list(ip, list) -> i32`
    ip_in_list: u32,
    /// `client_ip(peer_trusted) -> address of 16 bytes`
    client_ip: u32,
    /// `country(peer_trusted, ip) -> code or 0`
    country: u32,
    /// `origin_allowed(cors) -> i32`
    origin_allowed: u32,
    /// `location(template) -> length, or -1 when too long`
    location: u32,
}

impl Util {
    fn declare(funcs: &mut Funcs) -> Util {
        Util {
            memeq: funcs.declare(&[I32, I32, I32], &[I32]),
            name_is: funcs.declare(&[I32, I32, I32, I32], &[I32]),
            name_has: funcs.declare(&[I32, I32, I32, I32], &[I32]),
            find_header: funcs.declare(&[I32, I32], &[I32]),
            ip_in_list: funcs.declare(&[I32, I32], &[I32]),
            client_ip: funcs.declare(&[I32], &[I32]),
            country: funcs.declare(&[I32, I32], &[I32]),
            origin_allowed: funcs.declare(&[I32], &[I32]),
            location: funcs.declare(&[I32], &[I32]),
        }
    }

    fn define(&self, funcs: &mut Funcs, layout: &Layout, t: &CommonTables) {
        funcs.define(self.memeq, memeq());
        funcs.define(self.name_is, self.name_is_body());
        funcs.define(self.name_has, self.name_has_body());
        funcs.define(self.find_header, self.find_header_body(layout));
        funcs.define(self.ip_in_list, ip_in_list());
        funcs.define(self.client_ip, self.client_ip_body(layout, t));
        funcs.define(self.country, self.country_body(layout, t));
        funcs.define(self.origin_allowed, self.origin_allowed_body(layout, t));
        funcs.define(self.location, self.location_body(layout, t));
    }

    fn name_is_body(&self) -> wasm_encoder::Function {
        let (ptr, len, name, name_len) = (0, 1, 2, 3);
        let mut a = Asm::new(4);
        a.get(len).get(name_len);
        a.i().i32_ne();
        a.if_();
        a.ret_c(0);
        a.end();
        a.get(ptr).get(name).get(len);
        a.i().call(self.memeq);
        a.finish()
    }

    fn name_has_body(&self) -> wasm_encoder::Function {
        let (ptr, len, needle, needle_len) = (0, 1, 2, 3);
        let mut a = Asm::new(4);
        let last = a.local(I32);
        // Every start from ptr to ptr + len - needle_len.
        a.get(len).get(needle_len);
        a.i().i32_lt_u();
        a.if_();
        a.ret_c(0);
        a.end();
        a.get(ptr).get(len);
        a.i().i32_add();
        a.get(needle_len);
        a.i().i32_sub();
        a.set(last);
        a.block().loop_();
        a.get(ptr).get(last);
        a.i().i32_gt_u().br_if(1);
        a.get(ptr).get(needle).get(needle_len);
        a.i().call(self.memeq);
        a.if_();
        a.ret_c(1);
        a.end();
        a.inc(ptr, 1);
        a.i().br(0);
        a.end().end();
        a.c(0);
        a.finish()
    }

    fn find_header_body(&self, layout: &Layout) -> wasm_encoder::Function {
        let (name, len) = (0, 1);
        let mut a = Asm::new(2);
        let rec = a.local(I32);
        let end = a.local(I32);
        // rec = request + headers_off; end = rec + count * 16
        a.c(layout.request).load_abs(layout.request + req::HEADERS);
        a.i().i32_add();
        a.tee(rec);
        a.load_abs(layout.request + req::HEADERS + 4).c(16);
        a.i().i32_mul().i32_add();
        a.set(end);
        a.block().loop_();
        a.get(rec).get(end);
        a.i().i32_ge_u().br_if(1);
        // name length equal and bytes equal
        a.load(rec, 4).get(len);
        a.i().i32_eq();
        a.if_();
        a.c(layout.request).load(rec, 0);
        a.i().i32_add();
        a.get(name).get(len);
        a.i().call(self.memeq);
        a.if_();
        a.get(rec);
        a.i().return_();
        a.end();
        a.end();
        a.inc(rec, 16);
        a.i().br(0);
        a.end().end();
        a.c(0);
        a.finish()
    }

    fn client_ip_body(&self, layout: &Layout, t: &CommonTables) -> wasm_encoder::Function {
        let trusted = 0;
        let mut a = Asm::new(1);
        let client = a.local(I32);
        let base = a.local(I32);
        let i = a.local(I32);
        let rec = a.local(I32);
        a.set_c(client, layout.request + req::PEER);
        if t.trusted != 0 {
            a.get(trusted);
            a.if_();
            a.c(layout.request).load_abs(layout.request + req::XFF);
            a.i().i32_add();
            a.set(base);
            a.load_abs(layout.request + req::XFF + 4).set(i);
            a.block().loop_();
            a.get(i);
            a.i().i32_eqz().br_if(1);
            a.get(i).c(1);
            a.i().i32_sub();
            a.set(i);
            a.get(base).get(i).c(20);
            a.i().i32_mul().i32_add();
            a.set(rec);
            a.load(rec, 16);
            a.i().i32_eqz().br_if(1);
            a.get(rec).set(client);
            a.get(rec).c(t.trusted);
            a.i().call(self.ip_in_list).i32_eqz().br_if(1);
            a.i().br(0);
            a.end().end();
            a.end();
        }
        a.get(client);
        a.finish()
    }

    fn country_body(&self, layout: &Layout, t: &CommonTables) -> wasm_encoder::Function {
        let (trusted, ip) = (0, 1);
        let mut a = Asm::new(2);
        let rec = a.local(I32);
        let value = a.local(I32);
        let c0 = a.local(I32);
        let c1 = a.local(I32);
        if let Some((name, len)) = t.country_header {
            a.c(name).c(len);
            a.i().call(self.find_header);
            a.tee(rec);
            a.if_();
            a.get(trusted);
            a.if_();
            // Two ASCII letters: upper-case them into the code.
            a.load(rec, 12).c(2);
            a.i().i32_eq();
            a.if_();
            a.c(layout.request).load(rec, 8);
            a.i().i32_add();
            a.set(value);
            a.load8(value, 0).c(0xDF);
            a.i().i32_and();
            a.set(c0);
            a.load8(value, 1).c(0xDF);
            a.i().i32_and();
            a.set(c1);
            // letter: (b & 0xDF) in 'A'..='Z' and b itself is a letter (b | 0x20 in 'a'..='z')
            a.load8(value, 0).c(0x20);
            a.i().i32_or();
            a.c(b'a' as u32);
            a.i().i32_sub();
            a.c(26);
            a.i().i32_lt_u();
            a.load8(value, 1).c(0x20);
            a.i().i32_or();
            a.c(b'a' as u32);
            a.i().i32_sub();
            a.c(26);
            a.i().i32_lt_u().i32_and();
            a.if_();
            a.get(c0).get(c1).c(8);
            a.i().i32_shl().i32_or().return_();
            a.end();
            a.end();
            a.else_();
            // From an untrusted peer the header is ignored and removed.
            a.store_abs(layout.decision + dec::FLAGS, |a| {
                a.load_abs(layout.decision + dec::FLAGS)
                    .c(dec::FLAG_STRIP_COUNTRY_HEADER);
                a.i().i32_or();
            });
            a.end();
            a.end();
        }
        if t.ranges != 0 {
            geo_lookup(&mut a, t.ranges, ip);
        } else {
            a.c(0);
        }
        a.finish()
    }

    fn origin_allowed_body(&self, layout: &Layout, t: &CommonTables) -> wasm_encoder::Function {
        let cors = 0;
        let mut a = Asm::new(1);
        let rec = a.local(I32);
        let table = a.local(I32);
        let n = a.local(I32);
        let entry = a.local(I32);
        let value = a.local(I32);
        let len = a.local(I32);
        let _ = layout;
        a.c(t.origin_name.0).c(t.origin_name.1);
        a.i().call(self.find_header);
        a.tee(rec);
        a.i().i32_eqz();
        a.if_();
        a.ret_c(0);
        a.end();
        a.get(cors).c(4);
        a.i().i32_mul();
        a.i().i32_load(mem(t.cors, 2));
        a.set(table);
        a.load(table, 0);
        a.if_();
        a.ret_c(1);
        a.end();
        a.c(layout.request).load(rec, 8);
        a.i().i32_add();
        a.set(value);
        a.load(rec, 12).set(len);
        a.load(table, 4).set(n);
        a.get(table).c(8);
        a.i().i32_add();
        a.set(entry);
        a.block().loop_();
        a.get(n);
        a.i().i32_eqz().br_if(1);
        a.load(entry, 4).get(len);
        a.i().i32_eq();
        a.if_();
        a.load(entry, 0).get(value).get(len);
        a.i().call(self.memeq);
        a.if_();
        a.ret_c(1);
        a.end();
        a.end();
        a.inc(entry, 8);
        a.get(n).c(1);
        a.i().i32_sub();
        a.set(n);
        a.i().br(0);
        a.end().end();
        a.c(0);
        a.finish()
    }

    /// Writes a redirect location into the decision block.
    fn location_body(&self, layout: &Layout, t: &CommonTables) -> wasm_encoder::Function {
        let template = 0;
        let mut a = Asm::new(1);
        let out = a.local(I32);
        let limit = a.local(I32);
        let part = a.local(I32);
        let parts_left = a.local(I32);
        let kind = a.local(I32);
        let seg = a.local(I32);
        let seg_end = a.local(I32);
        let src = a.local(I32);
        let src_end = a.local(I32);
        let b = a.local(I32);
        let segs = a.local(I32);
        let nsegs = a.local(I32);
        let out_start = layout.decision + dec::LOCATION;
        a.set_c(out, out_start);
        a.set_c(limit, out_start + dec::MAX_LOCATION);
        a.c(layout.request).load_abs(layout.request + req::SEGMENTS);
        a.i().i32_add();
        a.set(segs);
        a.load_abs(layout.request + req::SEGMENTS + 4).set(nsegs);
        a.load(template, 0).set(parts_left);
        a.get(template).c(4);
        a.i().i32_add();
        a.set(part);
        a.block().loop_();
        a.get(parts_left);
        a.i().i32_eqz().br_if(1);
        a.load(part, 0).set(kind);
        a.get(kind);
        a.i().i32_eqz();
        a.if_();
        {
            // Literal: copy (ptr, len) if it fits.
            ensure_room(&mut a, out, limit, |a| {
                a.load(part, 8);
            });
            a.get(out).load(part, 4).load(part, 8);
            a.i().memory_copy(0, 0);
            a.get(out).load(part, 8);
            a.i().i32_add();
            a.set(out);
        }
        a.else_();
        a.get(kind).c(3);
        a.i().i32_eq();
        a.if_();
        {
            // The request's query, if any, after the join byte.
            a.load_abs(layout.request + req::QUERY + 4).set(seg_end);
            a.get(seg_end);
            a.if_();
            a.load(part, 4);
            a.if_();
            push_byte(&mut a, out, limit, |a| {
                a.load(part, 4);
            });
            a.end();
            a.c(layout.request).load_abs(layout.request + req::QUERY);
            a.i().i32_add();
            a.tee(src).get(seg_end);
            a.i().i32_add();
            a.set(src_end);
            percent_encode(&mut a, t, KEEP_IN_QUERY, [src, src_end, out, limit, b]);
            a.end();
        }
        a.else_();
        {
            // Segments `seg..seg_end`, percent-encoded, joined with `/`.
            a.load(part, 4).set(seg);
            a.get(kind).c(1);
            a.i().i32_eq();
            a.if_();
            a.get(seg).c(1);
            a.i().i32_add();
            a.set(seg_end);
            a.else_();
            a.get(nsegs).set(seg_end);
            a.end();
            a.get(seg_end).get(nsegs);
            a.i().i32_gt_u();
            a.if_();
            a.get(nsegs).set(seg_end);
            a.end();
            a.block().loop_();
            a.get(seg).get(seg_end);
            a.i().i32_ge_u().br_if(1);
            // separator before every segment but the first of this part
            a.get(seg).load(part, 4);
            a.i().i32_ne();
            a.if_();
            push_byte(&mut a, out, limit, |a| {
                a.c(u32::from(b'/'));
            });
            a.end();
            // src = request + seg.off; src_end = src + seg.len
            a.c(layout.request).get(segs).get(seg).c(8);
            a.i().i32_mul().i32_add().i32_load(mem(0, 2)).i32_add();
            a.tee(src);
            a.get(segs).get(seg).c(8);
            a.i().i32_mul().i32_add().i32_load(mem(4, 2)).i32_add();
            a.set(src_end);
            percent_encode(&mut a, t, KEEP_IN_SEGMENT, [src, src_end, out, limit, b]);
            a.inc(seg, 1);
            a.i().br(0);
            a.end().end();
        }
        a.end();
        a.end();
        a.inc(part, 12);
        a.get(parts_left).c(1);
        a.i().i32_sub();
        a.set(parts_left);
        a.i().br(0);
        a.end().end();
        a.get(out).c(out_start);
        a.i().i32_sub();
        a.finish()
    }
}

/// In the redirect `keep` table: the byte stays as it is in a path segment.
const KEEP_IN_SEGMENT: u8 = 1;
/// In the redirect `keep` table: the byte stays as it is in a carried-over query.
const KEEP_IN_QUERY: u8 = 2;

/// Returns `u32::MAX` from the function unless the bytes `len` pushes fit between `out`
/// and `limit`.
fn ensure_room(a: &mut Asm, out: u32, limit: u32, len: impl FnOnce(&mut Asm)) {
    a.get(out);
    len(a);
    a.i().i32_add();
    a.get(limit);
    a.i().i32_gt_u();
    a.if_();
    a.ret_c(u32::MAX);
    a.end();
}

/// Stores the byte `value` pushes at `out` and advances it; returns `u32::MAX` from the
/// function when `out` has reached `limit`.
fn push_byte(a: &mut Asm, out: u32, limit: u32, value: impl FnOnce(&mut Asm)) {
    ensure_room(a, out, limit, |a| {
        a.c(1);
    });
    a.get(out);
    value(a);
    a.i().i32_store8(mem(0, 0));
    a.inc(out, 1);
}

/// Copies `src..src_end` to `out`, percent-encoding every byte whose `keep` table entry
/// lacks `mask`; returns `u32::MAX` from the function when `limit` would be passed.
fn percent_encode(a: &mut Asm, t: &CommonTables, mask: u8, locals: [u32; 5]) {
    let [src, src_end, out, limit, b] = locals;
    a.block().loop_();
    a.get(src).get(src_end);
    a.i().i32_ge_u().br_if(1);
    a.load8(src, 0).set(b);
    a.get(b);
    a.i().i32_load8_u(mem(t.keep, 0));
    a.c(u32::from(mask));
    a.i().i32_and();
    a.if_();
    push_byte(a, out, limit, |a| {
        a.get(b);
    });
    a.else_();
    ensure_room(a, out, limit, |a| {
        a.c(3);
    });
    a.get(out).c(b'%' as u32);
    a.i().i32_store8(mem(0, 0));
    a.get(out).get(b).c(4);
    a.i()
        .i32_shr_u()
        .i32_load8_u(mem(t.hex, 0))
        .i32_store8(mem(1, 0));
    a.get(out).get(b).c(15);
    a.i()
        .i32_and()
        .i32_load8_u(mem(t.hex, 0))
        .i32_store8(mem(2, 0));
    a.inc(out, 3);
    a.end();
    a.inc(src, 1);
    a.i().br(0);
    a.end().end();
}

fn memeq() -> wasm_encoder::Function {
    let (x, y, len) = (0, 1, 2);
    let mut a = Asm::new(3);
    // 8 bytes at a time, then bytes.
    a.block().loop_();
    a.get(len).c(8);
    a.i().i32_lt_u().br_if(1);
    a.get(x);
    a.i().i64_load(mem(0, 0));
    a.get(y);
    a.i().i64_load(mem(0, 0)).i64_ne();
    a.if_();
    a.ret_c(0);
    a.end();
    a.inc(x, 8).inc(y, 8);
    a.get(len).c(8);
    a.i().i32_sub();
    a.set(len);
    a.i().br(0);
    a.end().end();
    a.block().loop_();
    a.get(len);
    a.i().i32_eqz().br_if(1);
    a.load8(x, 0).load8(y, 0);
    a.i().i32_ne();
    a.if_();
    a.ret_c(0);
    a.end();
    a.inc(x, 1).inc(y, 1);
    a.get(len).c(1);
    a.i().i32_sub();
    a.set(len);
    a.i().br(0);
    a.end().end();
    a.c(1);
    a.finish()
}

/// `ip_in_list(ip, list)`: whether the 16-byte address is in one of the (net, mask) pairs.
fn ip_in_list() -> wasm_encoder::Function {
    let (ip, list) = (0, 1);
    let mut a = Asm::new(2);
    let n = a.local(I32);
    let entry = a.local(I32);
    a.load(list, 0).set(n);
    a.get(list).c(8);
    a.i().i32_add();
    a.set(entry);
    a.block().loop_();
    a.get(n);
    a.i().i32_eqz().br_if(1);
    for half in [0u32, 8] {
        a.get(ip);
        a.i().i64_load(mem(half, 0));
        a.get(entry);
        a.i().i64_load(mem(16 + half, 0)).i64_and();
        a.get(entry);
        a.i().i64_load(mem(half, 0)).i64_eq();
    }
    a.i().i32_and();
    a.if_();
    a.ret_c(1);
    a.end();
    a.inc(entry, 32);
    a.get(n).c(1);
    a.i().i32_sub();
    a.set(n);
    a.i().br(0);
    a.end().end();
    a.c(0);
    a.finish()
}

/// Binary search of the geo ranges for the address at local `ip`; leaves the country code
/// (or 0) on the stack.
fn geo_lookup(a: &mut Asm, ranges: u32, ip: u32) {
    let hi = a.local(I64);
    let lo = a.local(I64);
    let low = a.local(I32);
    let high = a.local(I32);
    let mid = a.local(I32);
    let entry = a.local(I32);
    // The address as two big-endian numbers.
    for (local, from) in [(hi, 0u32), (lo, 8)] {
        a.i().i64_const(0);
        a.set(local);
        for k in 0..8 {
            a.get(local);
            a.i().i64_const(8).i64_shl();
            a.get(ip);
            a.i().i64_load8_u(mem(from + k, 0)).i64_or();
            a.set(local);
        }
    }
    let table = ranges + 8;
    a.set_c(low, 0);
    a.load_abs(ranges).set(high);
    a.block().loop_();
    a.get(low).get(high);
    a.i().i32_ge_u().br_if(1);
    a.get(low).get(high);
    a.i().i32_add().i32_const(1).i32_shr_u();
    a.set(mid);
    a.get(mid).c(40);
    a.i().i32_mul();
    a.c(table);
    a.i().i32_add();
    a.set(entry);
    // start <= ip ?
    a.get(entry);
    a.i().i64_load(mem(0, 3));
    a.get(hi);
    a.i().i64_lt_u();
    a.get(entry);
    a.i().i64_load(mem(0, 3));
    a.get(hi);
    a.i().i64_eq();
    a.get(entry);
    a.i().i64_load(mem(8, 3));
    a.get(lo);
    a.i().i64_le_u().i32_and().i32_or();
    a.if_();
    a.get(mid).c(1);
    a.i().i32_add();
    a.set(low);
    a.else_();
    a.get(mid).set(high);
    a.end();
    a.i().br(0);
    a.end().end();
    // Candidate: low - 1, if ip <= its end.
    a.get(low);
    a.i().i32_eqz();
    a.if_();
    a.ret_c(0);
    a.end();
    a.get(low).c(1);
    a.i().i32_sub();
    a.c(40);
    a.i().i32_mul();
    a.c(table);
    a.i().i32_add();
    a.set(entry);
    a.get(hi);
    a.get(entry);
    a.i().i64_load(mem(16, 3)).i64_lt_u();
    a.get(hi);
    a.get(entry);
    a.i().i64_load(mem(16, 3)).i64_eq();
    a.get(lo);
    a.get(entry);
    a.i().i64_load(mem(24, 3)).i64_le_u().i32_and().i32_or();
    a.if_();
    a.load(entry, 32);
    a.i().return_();
    a.end();
    a.c(0);
}

/// Stores a final answer and returns 0 from `decide`.
fn final_answer(
    a: &mut Asm,
    layout: &Layout,
    kind: u32,
    status: impl FnOnce(&mut Asm),
    arg: impl FnOnce(&mut Asm),
) {
    let d = layout.decision;
    a.store_abs(d + dec::OUTCOME, |a| {
        a.c(dec::OUTCOME_FINAL);
    });
    a.store_abs(d + dec::ANSWER, |a| {
        a.c(kind);
    });
    a.store_abs(d + dec::STATUS, status);
    a.store_abs(d + dec::ANSWER_ARG, arg);
    a.ret_c(0);
}

fn decide_body(
    plan: &RegionPlan,
    layout: &Layout,
    t: &CommonTables,
    routes: &routes::Tables,
    util: &Util,
    route_fns: &routes::Fns,
    waf_fns: Option<&waf::Fns>,
) -> wasm_encoder::Function {
    let d = layout.decision;
    let r = layout.request;
    let len = 0;
    let mut a = Asm::new(1);
    let trusted = a.local(I32);
    let client = a.local(I32);
    let country = a.local(I32);
    let zone = a.local(I32);
    let idx = a.local(I32);
    let flags = a.local(I32);
    let method = a.local(I32);
    let route = a.local(I32);
    let rec = a.local(I32);
    let n = a.local(I32);
    let x = a.local(I32);
    let list = a.local(I32);
    let count = a.local(I32);
    let kind = a.local(I32);

    a.get(len).c(layout.request_capacity);
    a.i().i32_gt_u();
    a.if_();
    a.ret_c(abi::decide_error::TOO_LARGE as u32);
    a.end();
    a.load_abs(r + req::ABI).c(abi::ABI_VERSION);
    a.i().i32_ne();
    a.if_();
    a.ret_c(abi::decide_error::BAD_ABI as u32);
    a.end();
    // The decision's fixed fields, cleared with plain stores: `memory.fill` is a call out
    // of the module in wasmtime, dearer than these sixteen.
    for at in (0..128).step_by(8) {
        a.c(0);
        a.i().i64_const(0).i64_store(mem(d + at, 3));
    }
    a.store_abs(d + dec::ROUTE, |a| {
        a.c(abi::NONE);
    });
    a.load_abs(r + req::FLAGS).set(flags);

    // Geo: client address, country, data zone, lists.
    if t.trusted != 0 {
        a.c(r + req::PEER).c(t.trusted);
        a.i().call(util.ip_in_list);
        a.set(trusted);
    }
    a.get(trusted);
    a.i().call(util.client_ip);
    a.set(client);
    for half in [0u32, 8] {
        a.c(0).get(client);
        a.i()
            .i64_load(mem(half, 0))
            .i64_store(mem(d + dec::CLIENT_IP + half, 0));
    }
    if plan.geo.is_some() {
        a.get(trusted).get(client);
        a.i().call(util.country);
        a.set(country);
    }
    a.store_abs(d + dec::COUNTRY, |a| {
        a.get(country);
    });
    // idx = (c0 - 'A') * 26 + (c1 - 'A')
    a.get(country).c(0xFF);
    a.i().i32_and();
    a.c(b'A' as u32);
    a.i().i32_sub();
    a.c(26);
    a.i().i32_mul();
    a.get(country).c(8);
    a.i().i32_shr_u();
    a.c(b'A' as u32);
    a.i().i32_sub().i32_add();
    a.set(idx);
    a.set_c(zone, t.global_zone);
    a.get(country);
    a.if_();
    a.get(idx);
    a.i().i32_load8_u(mem(t.zone_of, 0));
    a.set(zone);
    a.end();
    a.store_abs(d + dec::DATA_ZONE, |a| {
        a.get(zone);
    });
    let in_set = |a: &mut Asm, set: u32| {
        a.get(idx).c(3);
        a.i().i32_shr_u().i32_load8_u(mem(set, 0));
        a.get(idx).c(7);
        a.i().i32_and().i32_shr_u().i32_const(1).i32_and();
    };
    if let Some((set, status)) = t.block {
        a.get(country);
        a.if_();
        in_set(&mut a, set);
        a.if_();
        final_answer(
            &mut a,
            layout,
            answer::GEO_BLOCKED,
            |a| {
                a.c(u32::from(status));
            },
            |a| {
                a.c(0);
            },
        );
        a.end();
        a.end();
    }
    if let Some((set, status)) = t.allow {
        a.get(country);
        a.if_();
        in_set(&mut a, set);
        a.set(x);
        a.else_();
        a.set_c(x, 0);
        a.end();
        a.get(x);
        a.i().i32_eqz();
        a.if_();
        final_answer(
            &mut a,
            layout,
            answer::GEO_BLOCKED,
            |a| {
                a.c(u32::from(status));
            },
            |a| {
                a.c(0);
            },
        );
        a.end();
    }

    // Route.
    a.get(flags).c(flag::PREFLIGHT);
    a.i().i32_and();
    a.if_();
    a.load_abs(r + req::PREFLIGHT_METHOD).set(method);
    a.else_();
    a.load_abs(r + req::METHOD).set(method);
    a.end();
    // Matching ors into the answer's argument the methods of routes whose path and host
    // match but whose methods do not take this one: with none that does, 405 and those.
    // Only final answers read the argument, and each writes its own.
    let refused = d + dec::ANSWER_ARG;
    a.store_abs(refused, |a| {
        a.c(0);
    });
    a.get(method);
    a.i().call(route_fns.match_route);
    a.tee(route);
    a.c(abi::NONE);
    a.i().i32_eq();
    a.if_();
    a.load_abs(refused);
    a.if_();
    final_answer(
        &mut a,
        layout,
        answer::METHOD_NOT_ALLOWED,
        |a| {
            a.c(405);
        },
        |a| {
            a.load_abs(refused);
        },
    );
    a.end();
    final_answer(
        &mut a,
        layout,
        answer::NOT_FOUND,
        |a| {
            a.c(404);
        },
        |a| {
            a.c(0);
        },
    );
    a.end();
    a.store_abs(d + dec::ROUTE, |a| {
        a.get(route);
    });
    a.get(route).c(routes::RECORD_SIZE);
    a.i().i32_mul();
    a.c(routes.records);
    a.i().i32_add();
    a.set(rec);
    a.store_abs(d + dec::EDITS, |a| {
        a.load(rec, routes::R_EDITS);
    });

    // CORS preflight.
    if !plan.cors.is_empty() || plan.routes.iter().any(|r| r.cors.is_some()) {
        a.get(flags).c(flag::PREFLIGHT);
        a.i().i32_and();
        a.if_();
        a.load(rec, routes::R_CORS).set(x);
        a.get(x).c(abi::NONE);
        a.i().i32_eq();
        a.if_();
        final_answer(
            &mut a,
            layout,
            answer::PREFLIGHT,
            |a| {
                a.c(403);
            },
            |a| {
                a.c(abi::NONE);
            },
        );
        a.end();
        // allowed = origin_allowed(cors) && method bit in the route's CORS mask
        a.get(x);
        a.i().call(util.origin_allowed);
        a.load(rec, routes::R_CORS_METHODS).get(method);
        a.i().i32_shr_u().i32_const(1).i32_and().i32_and();
        a.set(n);
        final_answer(
            &mut a,
            layout,
            answer::PREFLIGHT,
            |a| {
                a.c(204).c(403).get(n);
                a.i().select();
            },
            |a| {
                a.get(x);
            },
        );
        a.end();
    } else {
        a.get(flags).c(flag::PREFLIGHT);
        a.i().i32_and();
        a.if_();
        final_answer(
            &mut a,
            layout,
            answer::PREFLIGHT,
            |a| {
                a.c(403);
            },
            |a| {
                a.c(abi::NONE);
            },
        );
        a.end();
    }

    // WAF.
    if let (Some(fns), Some(waf)) = (waf_fns, &plan.waf) {
        a.load(rec, routes::R_WAF_MODE);
        a.if_();
        if waf.block_oversized_bodies {
            a.load_abs(r + req::BODY_TOTAL).c(waf.body_limit);
            a.i().i32_gt_u();
            a.if_();
            final_answer(
                &mut a,
                layout,
                answer::BODY_TOO_LARGE,
                |a| {
                    a.c(413);
                },
                |a| {
                    a.c(0);
                },
            );
            a.end();
        }
        a.get(rec);
        a.i().call(fns.waf);
        a.c(waf.threshold);
        a.i().i32_ge_u();
        a.if_();
        a.load(rec, routes::R_WAF_MODE).c(2);
        a.i().i32_eq();
        a.if_();
        final_answer(
            &mut a,
            layout,
            answer::WAF_BLOCKED,
            |a| {
                a.c(403);
            },
            |a| {
                a.c(0);
            },
        );
        a.end();
        a.store_abs(d + dec::FLAGS, |a| {
            a.load_abs(d + dec::FLAGS).c(dec::FLAG_WAF_LOGGED);
            a.i().i32_or();
        });
        a.end();
        a.end();
    }

    // Effects, in phase order.
    let push = |a: &mut Asm, kind: u32, arg: &dyn Fn(&mut Asm)| {
        a.get(n).c(dec::MAX_EFFECTS);
        a.i().i32_lt_u();
        a.if_();
        a.get(n).c(8);
        a.i().i32_mul();
        a.c(kind);
        a.i().i32_store(mem(d + dec::EFFECTS, 2));
        a.get(n).c(8);
        a.i().i32_mul();
        arg(a);
        a.i().i32_store(mem(d + dec::EFFECTS + 4, 2));
        a.end();
        a.inc(n, 1);
    };
    a.set_c(n, 0);
    // CORS first: every answer the route's effects give (a cache hit, a 401, a 429)
    // carries the CORS headers, or a browser hides it from the page.
    if !plan.cors.is_empty() {
        a.load(rec, routes::R_CORS).tee(x);
        a.c(abi::NONE);
        a.i().i32_ne();
        a.if_();
        a.get(x);
        a.i().call(util.origin_allowed);
        a.if_();
        push(&mut a, effect::CORS, &|a| {
            a.get(x);
        });
        a.end();
        a.end();
    }
    // JWT: a request without a bearer token is answered here, unless an effect (CORS)
    // must shape that answer; the node's verification then refuses the missing token.
    a.load(rec, routes::R_AUTH).tee(x);
    a.c(abi::NONE);
    a.i().i32_ne();
    a.if_();
    a.get(flags).c(flag::HAS_BEARER);
    a.i().i32_and().i32_eqz();
    a.get(n);
    a.i().i32_eqz().i32_and();
    a.if_();
    final_answer(
        &mut a,
        layout,
        answer::UNAUTHORIZED,
        |a| {
            a.c(401);
        },
        |a| {
            a.get(x);
        },
    );
    a.end();
    push(&mut a, effect::VERIFY_JWT, &|a| {
        a.get(x);
    });
    a.end();
    // Rate limits
    a.load(rec, routes::R_RATELIMITS).tee(list);
    a.if_();
    a.load(list, 0).set(count);
    a.block().loop_();
    a.get(count);
    a.i().i32_eqz().br_if(1);
    a.inc(list, 4);
    push(&mut a, effect::RATE_LIMIT, &|a| {
        a.load(list, 0);
    });
    a.get(count).c(1);
    a.i().i32_sub();
    a.set(count);
    a.i().br(0);
    a.end().end();
    a.end();
    // Cache (forwarding routes only, GET and HEAD only: other methods change things)
    a.load(rec, routes::R_ACTION).set(kind);
    a.load(rec, routes::R_CACHE).tee(x);
    a.i().i32_const(0).i32_ne();
    a.get(kind).c(routes::ACTION_FUNCTION);
    a.i().i32_le_u().i32_and();
    a.get(method).c(method::GET);
    a.i().i32_sub();
    a.c(method::HEAD - method::GET);
    a.i().i32_le_u().i32_and();
    a.if_();
    a.get(x).c(routes::CACHE_BYPASS_CREDENTIALED);
    a.i().i32_eq();
    a.get(flags).c(flag::HAS_AUTHORIZATION | flag::HAS_COOKIE);
    a.i().i32_and().i32_const(0).i32_ne().i32_and();
    a.if_();
    a.store_abs(d + dec::FLAGS, |a| {
        a.load_abs(d + dec::FLAGS).c(dec::FLAG_CACHE_BYPASSED);
        a.i().i32_or();
    });
    a.else_();
    push(&mut a, effect::CACHE, &|a| {
        a.get(route);
    });
    a.end();
    a.end();
    // Request header edits (forwarding routes only)
    a.load(rec, routes::R_EDITS_REQUEST);
    a.get(kind).c(routes::ACTION_FUNCTION);
    a.i().i32_le_u().i32_and();
    a.if_();
    push(&mut a, effect::EDIT_HEADERS, &|a| {
        a.load(rec, routes::R_EDITS);
    });
    a.end();
    // Residency
    if !plan.residency.is_empty() {
        a.load(rec, routes::R_ZONE).tee(x);
        a.c(abi::NONE);
        a.i().i32_ne();
        a.get(x).get(zone);
        a.i().i32_ne().i32_and();
        a.get(zone);
        a.i().i32_load8_u(mem(t.residency, 0)).i32_and();
        a.if_();
        push(&mut a, effect::RESIDENCY, &|a| {
            a.get(zone);
        });
        a.end();
    }
    // The action.
    a.load(rec, routes::R_ARG).set(x);
    a.get(kind).c(routes::ACTION_PROXY);
    a.i().i32_eq();
    a.if_();
    push(&mut a, effect::PROXY, &|a| {
        a.get(x);
    });
    a.end();
    a.get(kind).c(routes::ACTION_FUNCTION);
    a.i().i32_eq();
    a.if_();
    push(&mut a, effect::FUNCTION, &|a| {
        a.get(x);
    });
    a.end();
    a.get(kind).c(routes::ACTION_RESPOND);
    a.i().i32_eq();
    a.if_();
    a.get(n);
    a.i().i32_eqz();
    a.if_();
    final_answer(
        &mut a,
        layout,
        answer::RESPOND,
        |a| {
            a.load(rec, routes::R_STATUS);
        },
        |a| {
            a.get(x);
        },
    );
    a.end();
    push(&mut a, effect::RESPOND, &|a| {
        a.get(x);
    });
    a.end();
    a.get(kind).c(routes::ACTION_BLOCK);
    a.i().i32_eq();
    a.if_();
    a.get(n);
    a.i().i32_eqz();
    a.if_();
    final_answer(
        &mut a,
        layout,
        answer::BLOCK,
        |a| {
            a.get(x);
        },
        |a| {
            a.c(0);
        },
    );
    a.end();
    push(&mut a, effect::BLOCK, &|a| {
        a.get(route);
    });
    a.end();
    a.get(kind).c(routes::ACTION_REDIRECT);
    a.i().i32_eq();
    a.if_();
    a.load(rec, routes::R_TEMPLATE);
    a.i().call(util.location);
    a.tee(list);
    a.c(u32::MAX);
    a.i().i32_eq();
    a.if_();
    final_answer(
        &mut a,
        layout,
        answer::BLOCK,
        |a| {
            a.c(414);
        },
        |a| {
            a.c(0);
        },
    );
    a.end();
    a.store_abs(d + dec::LOCATION_LEN, |a| {
        a.get(list);
    });
    a.get(n);
    a.i().i32_eqz();
    a.if_();
    final_answer(
        &mut a,
        layout,
        answer::REDIRECT,
        |a| {
            a.get(x);
        },
        |a| {
            a.c(0);
        },
    );
    a.end();
    push(&mut a, effect::REDIRECT, &|a| {
        a.get(route);
    });
    a.end();

    a.store_abs(d + dec::EFFECTS_COUNT, |a| {
        a.get(n).c(dec::MAX_EFFECTS).get(n).c(dec::MAX_EFFECTS);
        a.i().i32_lt_u().select();
    });
    a.store_abs(d + dec::OUTCOME, |a| {
        a.c(dec::OUTCOME_EFFECTS);
    });
    a.c(0);
    a.finish()
}
