//! Route selection in the module: one trie per host pattern, laid out as tables, walked by a
//! small recursive matcher that tries literal, then `:param`, then `*` at each segment.
//!
//! Tries are tried in host order (exact host, wildcard hosts longest suffix first, routes
//! without hosts), so the first match found is the best under the language's precedence.
//! Literal children of all nodes share one open-addressing hash table keyed by (node,
//! segment), so a node with ten thousand children costs one probe, not a scan.

use std::collections::BTreeMap;

use edgepack_bundles::abi::{self, dec, method, req};

use super::asm::{Asm, Data, I32, mem};
use super::funcs::Funcs;
use super::{Layout, Util};
use crate::plan::*;

pub const RECORD_SIZE: u32 = 64;
pub const R_ACTION: u32 = 0;
pub const R_ARG: u32 = 4;
pub const R_AUTH: u32 = 8;
pub const R_RATELIMITS: u32 = 12;
pub const R_CACHE: u32 = 16;
pub const R_CORS: u32 = 20;
pub const R_EDITS: u32 = 24;
pub const R_EDITS_REQUEST: u32 = 28;
pub const R_WAF_MODE: u32 = 32;
pub const R_WAF_RULES: u32 = 36;
pub const R_ZONE: u32 = 40;
pub const R_CORS_METHODS: u32 = 44;
pub const R_STATUS: u32 = 48;
pub const R_TEMPLATE: u32 = 52;

pub const ACTION_PROXY: u32 = 1;
pub const ACTION_FUNCTION: u32 = 2;
pub const ACTION_RESPOND: u32 = 3;
pub const ACTION_REDIRECT: u32 = 4;
pub const ACTION_BLOCK: u32 = 5;

pub const CACHE_BYPASS_CREDENTIALED: u32 = 1;
pub const CACHE_ALL: u32 = 2;

const NODE_SIZE: u32 = 16;
const FNV_BASIS: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;
/// Hash seed of the exact-host table.
const HOST_SEED: u32 = u32::MAX;

/// FNV-1a of `bytes`, seeded with a node id; the generated code computes the same.
pub fn hash(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = (FNV_BASIS ^ seed).wrapping_mul(FNV_PRIME);
    for &b in bytes {
        h = (h ^ u32::from(b)).wrapping_mul(FNV_PRIME);
    }
    h
}

#[derive(Default)]
struct Node {
    literals: BTreeMap<Vec<u8>, usize>,
    param: Option<usize>,
    end: Vec<(u32, u32)>,
    rest: Vec<(u32, u32)>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum HostKey {
    Exact(String),
    Wildcard(String),
    Any,
}

pub struct Tables {
    pub records: u32,
    nodes: u32,
    lit_table: u32,
    lit_mask: u32,
    host_table: u32,
    host_mask: u32,
    wildcards: u32,
    default_root: u32,
}

fn method_mask(methods: &[String]) -> u32 {
    methods
        .iter()
        .fold(0, |m, name| m | method::bit(method::code(name)))
}

fn table_size(entries: usize) -> usize {
    (entries * 2).max(4).next_power_of_two()
}

impl Tables {
    pub fn new(plan: &RegionPlan, data: &mut Data) -> Tables {
        // Build the tries.
        let mut nodes: Vec<Node> = Vec::new();
        let mut roots: BTreeMap<HostKey, usize> = BTreeMap::new();
        for route in &plan.routes {
            let keys: Vec<HostKey> = if route.hosts.is_empty() {
                vec![HostKey::Any]
            } else {
                route
                    .hosts
                    .iter()
                    .map(|h| match h {
                        HostPlan::Exact(e) => HostKey::Exact(e.clone()),
                        HostPlan::Wildcard(w) => HostKey::Wildcard(w.clone()),
                    })
                    .collect()
            };
            let mask = method_mask(&route.methods);
            for key in keys {
                let root = *roots.entry(key).or_insert_with(|| {
                    nodes.push(Node::default());
                    nodes.len() - 1
                });
                let mut node = root;
                let mut rest = false;
                for segment in &route.segments {
                    match segment {
                        SegmentPlan::Literal(l) => {
                            let next = nodes.len();
                            let child = *nodes[node]
                                .literals
                                .entry(l.as_bytes().to_vec())
                                .or_insert(next);
                            if child == next {
                                nodes.push(Node::default());
                            }
                            node = child;
                        }
                        SegmentPlan::Param(_) => {
                            node = match nodes[node].param {
                                Some(p) => p,
                                None => {
                                    nodes.push(Node::default());
                                    let p = nodes.len() - 1;
                                    nodes[node].param = Some(p);
                                    p
                                }
                            };
                        }
                        SegmentPlan::Rest => {
                            nodes[node].rest.push((route.id, mask));
                            rest = true;
                        }
                    }
                }
                if !rest {
                    nodes[node].end.push((route.id, mask));
                }
            }
        }
        // Route lists: routes naming the method first.
        let list = |data: &mut Data, entries: &mut Vec<(u32, u32)>| -> u32 {
            if entries.is_empty() {
                return 0;
            }
            entries.sort_by_key(|(route, mask)| (*mask == 0, *route));
            let mut words = vec![entries.len() as u32];
            for (route, mask) in entries.iter() {
                words.extend([*route, *mask]);
            }
            data.words(&words)
        };
        let mut node_words = Vec::with_capacity(nodes.len() * 4);
        for node in nodes.iter_mut() {
            let end = list(data, &mut node.end);
            let rest = list(data, &mut node.rest);
            node_words.extend([node.param.map_or(abi::NONE, |p| p as u32), end, rest, 0]);
        }
        let nodes_at = data.words(&node_words);

        // Literal children.
        let entries: Vec<(u32, usize, &[u8])> = nodes
            .iter()
            .enumerate()
            .flat_map(|(id, n)| {
                n.literals
                    .iter()
                    .map(move |(l, c)| (id as u32, *c, l.as_slice()))
            })
            .collect();
        let size = table_size(entries.len());
        let mut slots = vec![[0u32; 4]; size];
        for (node, child, literal) in &entries {
            let ptr = data.bytes(literal);
            let mut slot = hash(*node, literal) as usize & (size - 1);
            while slots[slot][0] != 0 {
                slot = (slot + 1) & (size - 1);
            }
            slots[slot] = [node + 1, *child as u32, ptr, literal.len() as u32];
        }
        let lit_table = data.words(&slots.concat());

        // Hosts.
        let exact: Vec<(&String, usize)> = roots
            .iter()
            .filter_map(|(k, r)| match k {
                HostKey::Exact(h) => Some((h, *r)),
                _ => None,
            })
            .collect();
        let host_size = table_size(exact.len());
        let mut host_slots = vec![[0u32; 4]; host_size];
        for (host, root) in &exact {
            let ptr = data.bytes(host.as_bytes());
            let mut slot = hash(HOST_SEED, host.as_bytes()) as usize & (host_size - 1);
            while host_slots[slot][0] != 0 {
                slot = (slot + 1) & (host_size - 1);
            }
            host_slots[slot] = [1, *root as u32, ptr, host.len() as u32];
        }
        let host_table = data.words(&host_slots.concat());
        let mut wild: Vec<(&String, usize)> = roots
            .iter()
            .filter_map(|(k, r)| match k {
                HostKey::Wildcard(s) => Some((s, *r)),
                _ => None,
            })
            .collect();
        wild.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let mut wild_words = vec![wild.len() as u32];
        for (suffix, root) in &wild {
            let ptr = data.bytes(suffix.as_bytes());
            wild_words.extend([ptr, suffix.len() as u32, *root as u32]);
        }
        let wildcards = data.words(&wild_words);
        let default_root = roots.get(&HostKey::Any).map_or(abi::NONE, |r| *r as u32);

        // Route records.
        let rule_count = plan.waf.as_ref().map_or(0, |w| w.rules.len());
        let mut rule_sets: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        let mut records = Vec::with_capacity(plan.routes.len() * 16);
        for route in &plan.routes {
            let mut r = [0u32; 16];
            let (kind, arg) = match &route.action {
                ActionPlan::Proxy { origin, .. } => (ACTION_PROXY, *origin),
                ActionPlan::Function { function } => (ACTION_FUNCTION, *function),
                ActionPlan::Respond { response } => {
                    r[(R_STATUS / 4) as usize] =
                        u32::from(plan.responses[*response as usize].status);
                    (ACTION_RESPOND, *response)
                }
                ActionPlan::Redirect { status, target } => {
                    let mut words = vec![target.len() as u32];
                    for part in target {
                        match part {
                            TemplatePart::Literal(l) => {
                                let ptr = data.bytes(l.as_bytes());
                                words.extend([0, ptr, l.len() as u32]);
                            }
                            TemplatePart::Segment(i) => words.extend([1, *i, 0]),
                            TemplatePart::Rest(i) => words.extend([2, *i, 0]),
                            TemplatePart::Query { join } => {
                                words.extend([3, join.map_or(0, u32::from), 0])
                            }
                        }
                    }
                    r[(R_TEMPLATE / 4) as usize] = data.words(&words);
                    (ACTION_REDIRECT, u32::from(*status))
                }
                ActionPlan::Block { status } => (ACTION_BLOCK, u32::from(*status)),
            };
            r[(R_ACTION / 4) as usize] = kind;
            r[(R_ARG / 4) as usize] = arg;
            r[(R_AUTH / 4) as usize] = route.auth.unwrap_or(abi::NONE);
            r[(R_RATELIMITS / 4) as usize] = if route.ratelimits.is_empty() {
                0
            } else {
                let mut words = vec![route.ratelimits.len() as u32];
                words.extend(&route.ratelimits);
                data.words(&words)
            };
            r[(R_CACHE / 4) as usize] = match &route.cache {
                Some(c) if c.ttl_ms > 0 => {
                    if c.cache_credentialed {
                        CACHE_ALL
                    } else {
                        CACHE_BYPASS_CREDENTIALED
                    }
                }
                _ => 0,
            };
            r[(R_CORS / 4) as usize] = route.cors.unwrap_or(abi::NONE);
            r[(R_EDITS / 4) as usize] = route.edits;
            r[(R_EDITS_REQUEST / 4) as usize] =
                u32::from(!plan.edit_sets[route.edits as usize].request.is_empty());
            r[(R_WAF_MODE / 4) as usize] = match route.waf.mode {
                WafModePlan::Off => 0,
                WafModePlan::Log => 1,
                WafModePlan::Block => 2,
            };
            let mut bits = vec![0u8; rule_count.div_ceil(8).max(1)];
            for rule in &route.waf.rules {
                bits[*rule as usize / 8] |= 1 << (rule % 8);
            }
            let next = data.here();
            let set = *rule_sets.entry(bits.clone()).or_insert(next);
            if set == next {
                data.bytes(&bits);
            }
            r[(R_WAF_RULES / 4) as usize] = set;
            r[(R_ZONE / 4) as usize] = route.processing_zone.unwrap_or(abi::NONE);
            r[(R_CORS_METHODS / 4) as usize] = match route.cors.map(|c| &plan.cors[c as usize]) {
                Some(cors) if !cors.methods.is_empty() => method_mask(&cors.methods),
                Some(_) if !route.methods.is_empty() => method_mask(&route.methods),
                Some(_) => (1 << method::NAMES.len()) - 1,
                None => 0,
            };
            records.extend(r);
        }
        let records = data.words(&records);
        Tables {
            records,
            nodes: nodes_at,
            lit_table,
            lit_mask: size as u32 - 1,
            host_table,
            host_mask: host_size as u32 - 1,
            wildcards,
            default_root,
        }
    }
}

pub struct Fns {
    pub match_route: u32,
    trie: u32,
    lit_lookup: u32,
    list_match: u32,
    host_probe: u32,
    hash: u32,
}

impl Fns {
    pub fn declare(funcs: &mut Funcs) -> Fns {
        Fns {
            match_route: funcs.declare(&[I32], &[I32]),
            trie: funcs.declare(&[I32, I32, I32], &[I32]),
            lit_lookup: funcs.declare(&[I32, I32, I32], &[I32]),
            list_match: funcs.declare(&[I32, I32], &[I32]),
            host_probe: funcs.declare(&[I32, I32, I32], &[I32]),
            hash: funcs.declare(&[I32, I32, I32], &[I32]),
        }
    }

    pub fn define(&self, funcs: &mut Funcs, layout: &Layout, t: &Tables, util: &Util) {
        funcs.define(self.hash, hash_body());
        funcs.define(
            self.list_match,
            list_match_body(layout.decision + dec::ANSWER_ARG),
        );
        funcs.define(
            self.lit_lookup,
            self.probe_body(t.lit_table, t.lit_mask, true, util),
        );
        funcs.define(
            self.host_probe,
            self.probe_body(t.host_table, t.host_mask, false, util),
        );
        funcs.define(self.trie, self.trie_body(layout, t));
        funcs.define(self.match_route, self.match_route_body(layout, t, util));
    }

    /// `lookup(seed, ptr, len)`: open-addressing probe; `keyed` compares the node id too.
    fn probe_body(
        &self,
        table: u32,
        mask: u32,
        keyed: bool,
        util: &Util,
    ) -> wasm_encoder::Function {
        let (seed, ptr, len) = (0, 1, 2);
        let mut a = Asm::new(3);
        let slot = a.local(I32);
        let entry = a.local(I32);
        let tag = a.local(I32);
        a.get(seed).get(ptr).get(len);
        a.i().call(self.hash);
        a.c(mask);
        a.i().i32_and();
        a.set(slot);
        a.block().loop_();
        a.get(slot).c(16);
        a.i().i32_mul();
        a.c(table);
        a.i().i32_add();
        a.tee(entry);
        a.i().i32_load(mem(0, 2));
        a.tee(tag);
        a.i().i32_eqz();
        a.if_();
        a.ret_c(abi::NONE);
        a.end();
        if keyed {
            a.get(tag).get(seed).c(1);
            a.i().i32_add().i32_eq();
        } else {
            a.c(1);
        }
        a.load(entry, 12).get(len);
        a.i().i32_eq().i32_and();
        a.if_();
        a.load(entry, 8).get(ptr).get(len);
        a.i().call(util.memeq);
        a.if_();
        a.load(entry, 4);
        a.i().return_();
        a.end();
        a.end();
        a.get(slot).c(1);
        a.i().i32_add();
        a.c(mask);
        a.i().i32_and();
        a.set(slot);
        a.i().br(0);
        a.end().end();
        a.c(abi::NONE);
        a.finish()
    }

    fn trie_body(&self, layout: &Layout, t: &Tables) -> wasm_encoder::Function {
        let (node, i, method) = (0, 1, 2);
        let mut a = Asm::new(3);
        let rec = a.local(I32);
        let found = a.local(I32);
        let seg = a.local(I32);
        let child = a.local(I32);
        a.get(node).c(NODE_SIZE);
        a.i().i32_mul();
        a.c(t.nodes);
        a.i().i32_add();
        a.set(rec);
        // At the end of the path: routes ending here, then routes with `*` here.
        a.get(i).load_abs(layout.request + req::SEGMENTS + 4);
        a.i().i32_ge_u();
        a.if_();
        a.load(rec, 4).get(method);
        a.i().call(self.list_match);
        a.tee(found);
        a.c(abi::NONE);
        a.i().i32_ne();
        a.if_();
        a.get(found);
        a.i().return_();
        a.end();
        a.load(rec, 8).get(method);
        a.i().call(self.list_match);
        a.i().return_();
        a.end();
        // seg = request + segments_off + i * 8
        a.c(layout.request).load_abs(layout.request + req::SEGMENTS);
        a.i().i32_add();
        a.get(i).c(8);
        a.i().i32_mul().i32_add();
        a.set(seg);
        // literal child
        a.get(node);
        a.c(layout.request).load(seg, 0);
        a.i().i32_add();
        a.load(seg, 4);
        a.i().call(self.lit_lookup);
        a.tee(child);
        a.c(abi::NONE);
        a.i().i32_ne();
        a.if_();
        a.get(child).get(i).c(1);
        a.i().i32_add();
        a.get(method);
        a.i().call(self.trie);
        a.tee(found);
        a.c(abi::NONE);
        a.i().i32_ne();
        a.if_();
        a.get(found);
        a.i().return_();
        a.end();
        a.end();
        // parameter child
        a.load(rec, 0).tee(child);
        a.c(abi::NONE);
        a.i().i32_ne();
        a.if_();
        a.get(child).get(i).c(1);
        a.i().i32_add();
        a.get(method);
        a.i().call(self.trie);
        a.tee(found);
        a.c(abi::NONE);
        a.i().i32_ne();
        a.if_();
        a.get(found);
        a.i().return_();
        a.end();
        a.end();
        // `*` here takes the rest
        a.load(rec, 8).get(method);
        a.i().call(self.list_match);
        a.finish()
    }

    fn match_route_body(&self, layout: &Layout, t: &Tables, util: &Util) -> wasm_encoder::Function {
        let method = 0;
        let mut a = Asm::new(1);
        let root = a.local(I32);
        let found = a.local(I32);
        let n = a.local(I32);
        let entry = a.local(I32);
        let host = a.local(I32);
        let host_len = a.local(I32);
        let try_root = |a: &mut Asm| {
            a.get(root).c(0).get(method);
            a.i().call(self.trie);
            a.tee(found);
            a.c(abi::NONE);
            a.i().i32_ne();
            a.if_();
            a.get(found);
            a.i().return_();
            a.end();
        };
        a.c(layout.request).load_abs(layout.request + req::HOST);
        a.i().i32_add();
        a.set(host);
        a.load_abs(layout.request + req::HOST + 4).set(host_len);
        a.c(HOST_SEED).get(host).get(host_len);
        a.i().call(self.host_probe);
        a.tee(root);
        a.c(abi::NONE);
        a.i().i32_ne();
        a.if_();
        try_root(&mut a);
        a.end();
        a.load_abs(t.wildcards).set(n);
        a.set_c(entry, t.wildcards + 4);
        a.block().loop_();
        a.get(n);
        a.i().i32_eqz().br_if(1);
        // host longer than the suffix, and ending with it
        a.get(host_len).load(entry, 4);
        a.i().i32_gt_u();
        a.if_();
        a.get(host).get(host_len);
        a.i().i32_add();
        a.load(entry, 4);
        a.i().i32_sub();
        a.load(entry, 0).load(entry, 4);
        a.i().call(util.memeq);
        a.if_();
        a.load(entry, 8).set(root);
        try_root(&mut a);
        a.end();
        a.end();
        a.inc(entry, 12);
        a.get(n).c(1);
        a.i().i32_sub();
        a.set(n);
        a.i().br(0);
        a.end().end();
        if t.default_root != abi::NONE {
            a.set_c(root, t.default_root);
            try_root(&mut a);
        }
        a.c(abi::NONE);
        a.finish()
    }
}

fn hash_body() -> wasm_encoder::Function {
    let (seed, ptr, len) = (0, 1, 2);
    let mut a = Asm::new(3);
    let h = a.local(I32);
    let end = a.local(I32);
    a.c(FNV_BASIS).get(seed);
    a.i().i32_xor();
    a.c(FNV_PRIME);
    a.i().i32_mul();
    a.set(h);
    a.get(ptr).get(len);
    a.i().i32_add();
    a.set(end);
    a.block().loop_();
    a.get(ptr).get(end);
    a.i().i32_ge_u().br_if(1);
    a.get(h).load8(ptr, 0);
    a.i().i32_xor();
    a.c(FNV_PRIME);
    a.i().i32_mul();
    a.set(h);
    a.inc(ptr, 1);
    a.i().br(0);
    a.end().end();
    a.get(h);
    a.finish()
}

/// The first route of a list that takes the method; the masks of those that do not are
/// or-ed into the word at `refused` (the methods that path and host would take).
fn list_match_body(refused: u32) -> wasm_encoder::Function {
    let (list, method) = (0, 1);
    let mut a = Asm::new(2);
    let n = a.local(I32);
    let mask = a.local(I32);
    let entry = a.local(I32);
    a.get(list);
    a.i().i32_eqz();
    a.if_();
    a.ret_c(abi::NONE);
    a.end();
    a.load(list, 0).set(n);
    a.get(list).c(4);
    a.i().i32_add();
    a.set(entry);
    a.block().loop_();
    a.get(n);
    a.i().i32_eqz().br_if(1);
    a.load(entry, 4).set(mask);
    a.get(mask);
    a.i().i32_eqz();
    a.get(mask).get(method);
    a.i().i32_shr_u().i32_const(1).i32_and().i32_or();
    a.if_();
    a.load(entry, 0);
    a.i().return_();
    a.end();
    a.store_abs(refused, |a| {
        a.load_abs(refused).get(mask);
        a.i().i32_or();
    });
    a.inc(entry, 8);
    a.get(n).c(1);
    a.i().i32_sub();
    a.set(n);
    a.i().br(0);
    a.end().end();
    a.c(abi::NONE);
    a.finish()
}
