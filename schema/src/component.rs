//! Checks that an edge function is a `wasi:http/proxy` component: a valid component that
//! exports the HTTP handler and imports only what that world offers (plus the inert parts
//! of `wasi:cli` every Rust `std` build imports), so the node can run it with the fixed set
//! of host interfaces it links.

use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// The interfaces of the `wasi:http/proxy` world, which is all a function may import.
pub const PROXY_IMPORTS: &[&str] = &[
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/stdin",
];

/// Parts of `wasi:cli` that Rust's standard library (and wasi-libc) import on
/// `wasm32-wasip2` whatever the program does. They grant nothing: the environment and the
/// arguments are empty, `exit` ends the request as a trap, and no stream is a terminal. The
/// node links them so handlers built with `std` run; files, sockets and the rest of WASI
/// stay out.
pub const INERT_CLI_IMPORTS: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// The handler a function must export.
pub const HANDLER_EXPORT: &str = "wasi:http/incoming-handler";

/// The newest WASI 0.2 release the node's host implements; components built against any
/// 0.2 release up to it link.
pub const WASI_VERSION_MAX: (u64, u64, u64) = (0, 2, 12);

/// What is wrong with a would-be function.
#[derive(Debug, PartialEq, Eq)]
pub enum ComponentProblem {
    /// A core module (`wasm32-wasip1`, `wasm32-unknown-unknown`), not a component.
    CoreModule,
    /// Not valid WebAssembly.
    Invalid(String),
    /// Imports outside the proxy world (or of a WASI version the node lacks).
    ForeignImports(Vec<String>),
    /// No `wasi:http/incoming-handler` export.
    NoHandler(Vec<String>),
}

/// `Ok` when `bytes` is a component the node can serve as a `wasi:http/proxy` handler.
pub fn check_proxy_component(bytes: &[u8]) -> Result<(), ComponentProblem> {
    if !Parser::is_component(bytes) {
        return Err(if Parser::is_core_wasm(bytes) {
            ComponentProblem::CoreModule
        } else {
            ComponentProblem::Invalid("it has no WebAssembly header".into())
        });
    }
    let mut validator = Validator::new_with_features(WasmFeatures::default());
    validator
        .validate_all(bytes)
        .map_err(|e| ComponentProblem::Invalid(e.message().to_string()))?;
    let (imports, exports) = top_level_names(bytes).map_err(ComponentProblem::Invalid)?;
    let foreign: Vec<String> = imports
        .into_iter()
        .filter(|name| !proxy_import(name))
        .collect();
    if !foreign.is_empty() {
        return Err(ComponentProblem::ForeignImports(foreign));
    }
    if !exports.iter().any(|name| {
        interface_of(name).is_some_and(|(iface, v)| iface == HANDLER_EXPORT && supported(v))
    }) {
        return Err(ComponentProblem::NoHandler(exports));
    }
    Ok(())
}

/// The names the outermost component imports and exports; nested modules and components
/// are the component's own business.
fn top_level_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.message().to_string())? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    let import = import.map_err(|e| e.message().to_string())?;
                    imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    let export = export.map_err(|e| e.message().to_string())?;
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

fn proxy_import(name: &str) -> bool {
    interface_of(name).is_some_and(|(iface, version)| {
        (PROXY_IMPORTS.contains(&iface) || INERT_CLI_IMPORTS.contains(&iface)) && supported(version)
    })
}

/// `wasi:http/types@0.2.4` → (`wasi:http/types`, (0, 2, 4)).
fn interface_of(name: &str) -> Option<(&str, (u64, u64, u64))> {
    let (iface, version) = name.split_once('@')?;
    let mut numbers = version.split(['.', '-', '+']).map(|n| n.parse::<u64>());
    let version = (
        numbers.next()?.ok()?,
        numbers.next()?.ok()?,
        numbers.next()?.ok()?,
    );
    Some((iface, version))
}

fn supported(version: (u64, u64, u64)) -> bool {
    (version.0, version.1) == (WASI_VERSION_MAX.0, WASI_VERSION_MAX.1)
        && version <= WASI_VERSION_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_split_into_name_and_version() {
        assert_eq!(
            interface_of("wasi:http/types@0.2.4"),
            Some(("wasi:http/types", (0, 2, 4)))
        );
        assert_eq!(
            interface_of("wasi:io/poll@0.2.0-rc-2023-11-10"),
            Some(("wasi:io/poll", (0, 2, 0)))
        );
        assert_eq!(interface_of("wasi:io/poll"), None);
    }

    #[test]
    fn only_the_proxy_world_of_a_known_release_is_allowed() {
        assert!(proxy_import("wasi:cli/stdout@0.2.0"));
        assert!(proxy_import("wasi:http/outgoing-handler@0.2.12"));
        assert!(!proxy_import("wasi:http/outgoing-handler@0.2.99"));
        assert!(!proxy_import("wasi:http/types@0.3.0"));
        assert!(!proxy_import("wasi:filesystem/types@0.2.0"));
        assert!(proxy_import("wasi:cli/environment@0.2.0"));
        assert!(proxy_import("wasi:cli/terminal-stdout@0.2.3"));
        assert!(!proxy_import("wasi:filesystem/preopens@0.2.0"));
        assert!(!proxy_import("wasi:sockets/tcp@0.2.0"));
        assert!(!proxy_import("my:own/thing@1.0.0"));
    }

    #[test]
    fn core_modules_and_junk_are_told_apart() {
        assert_eq!(
            check_proxy_component(b"\0asm\x01\0\0\0"),
            Err(ComponentProblem::CoreModule)
        );
        assert!(matches!(
            check_proxy_component(b"not wasm"),
            Err(ComponentProblem::Invalid(_))
        ));
        assert!(matches!(
            check_proxy_component(b"\0asm\x0d\0\x01\0\xff"),
            Err(ComponentProblem::Invalid(_))
        ));
    }
}
