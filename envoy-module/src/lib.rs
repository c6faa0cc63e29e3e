//! Veto in-proxy: an Envoy HTTP filter, as a dynamic module (a cdylib Envoy 1.40 loads from
//! `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` as `libvetoinproxy.so`), that decides each request
//! inside Envoy exactly as the sidecar would — the same `veto` decision code path, policy
//! and rendering ([`filter`]) — reading revocations and feed freshness from the sidecar's
//! shared-memory mirror (`inproxy.shm_path`). No gRPC hop.
//!
//! Envoy configuration (see `deploy/envoy/envoy-inproxy.yaml.tmpl`):
//!
//! ```yaml
//! - name: envoy.filters.http.dynamic_modules
//!   typed_config:
//!     "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
//!     dynamic_module_config: {name: vetoinproxy}
//!     filter_name: veto
//!     filter_config:
//!       "@type": type.googleapis.com/google.protobuf.StringValue
//!       value: '{"veto_config": "/etc/veto/veto.toml"}'
//! ```
//!
//! This file is the FFI boundary: every hook catches panics (a panic is answered 503 and
//! counted in [`PANICS`], never unwound into Envoy), and nothing else here is unsafe beyond
//! reading and writing through Envoy's callbacks.
//!
//! Metrics, defined through the ABI when Envoy makes the configuration (stat creation is
//! frozen afterwards) and shown on Envoy's `/stats/prometheus`: `veto_inproxy_checks{result,
//! reason}` (one increment per check), `veto_inproxy_panics`,
//! `veto_inproxy_key_reload_failures` (the sidecar's keys file could not be read; the keys in
//! use were kept), and the gauges `veto_inproxy_table_generation` and
//! `veto_inproxy_feed_position` (what the module sees of the sidecar's shared memory,
//! refreshed at most once a second). Checks, panics and key reload failures are also added
//! to the counters file the sidecar exports as `veto_inproxy_*_total` (see [`filter`]). On allow, the verified claims go into the stream's dynamic metadata under
//! `authz.metadata_namespace` (default `veto`) for access logs and later filters (RBAC);
//! denials set none.

mod abi;
pub mod filter;

use abi::*;
use filter::{InProxy, Verdict};
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

/// Panics caught in the hooks (each answered 503, or a refused configuration).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Envoy's ids of the module's metrics in one configuration.
#[derive(Clone, Copy)]
struct MetricIds {
    checks: usize,
    panics: usize,
    key_reload_failures: usize,
    generation: usize,
    position: usize,
}

/// What the configuration pointer Envoy holds points to.
struct Configured {
    filter: InProxy,
    /// `None`: Envoy refused a definition (logged); nothing is counted through the ABI.
    ids: Option<MetricIds>,
}

/// Defines the module's metrics on the configuration being made.
///
/// # Safety
/// `config` is the configuration's envoy pointer, during `config_new`.
unsafe fn define_metrics(config: EnvoyPtr) -> Option<MetricIds> {
    if config.is_null() {
        return None;
    }
    let define = |name: &str, labels: &[&str], gauge: bool| -> Option<usize> {
        let mut names: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        let mut id = 0usize;
        // SAFETY: `config` is valid during config_new; the buffers live for the call and
        // Envoy copies the names; `id` is valid for writes.
        let r = unsafe {
            let f = if gauge {
                envoy_dynamic_module_callback_http_filter_config_define_gauge
            } else {
                envoy_dynamic_module_callback_http_filter_config_define_counter
            };
            f(
                config,
                ModuleBuffer::of(name.as_bytes()),
                if names.is_empty() {
                    std::ptr::null_mut()
                } else {
                    names.as_mut_ptr()
                },
                names.len(),
                &mut id,
            )
        };
        if r != METRICS_SUCCESS {
            log(&format!("metric {name} not defined (Envoy's result {r})"));
            return None;
        }
        Some(id)
    };
    Some(MetricIds {
        checks: define("veto_inproxy_checks", &["result", "reason"], false)?,
        panics: define("veto_inproxy_panics", &[], false)?,
        key_reload_failures: define("veto_inproxy_key_reload_failures", &[], false)?,
        generation: define("veto_inproxy_table_generation", &[], true)?,
        position: define("veto_inproxy_feed_position", &[], true)?,
    })
}

fn log(msg: &str) {
    // Envoy's stderr is its log; no token or secret ever reaches this.
    eprintln!("vetoinproxy: {msg}");
}

/// `envoy_dynamic_module_type_abi_version_module_ptr envoy_dynamic_module_on_program_init(void)`
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr()
}

/// `envoy_dynamic_module_type_http_filter_config_module_ptr
/// envoy_dynamic_module_on_http_filter_config_new(
///     envoy_dynamic_module_type_http_filter_config_envoy_ptr, envoy_buffer name,
///     envoy_buffer config)`: null refuses the configuration.
///
/// # Safety
/// Envoy passes buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: EnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    // SAFETY: Envoy owns `config` and keeps it valid during this call.
    let json = unsafe { envoy_bytes(config) };
    let built = catch_unwind(|| {
        let filter = InProxy::from_json(json.unwrap_or_default())?;
        // SAFETY: Envoy's configuration pointer, valid during this call.
        let ids = unsafe { define_metrics(config_envoy_ptr) };
        Ok::<_, String>(Configured { filter, ids })
    });
    match built {
        Ok(Ok(f)) => Box::into_raw(Box::new(f)) as ModulePtr,
        Ok(Err(e)) => {
            log(&format!("configuration refused: {e}"));
            std::ptr::null()
        }
        Err(_) => {
            PANICS.fetch_add(1, Ordering::Relaxed);
            log("configuration refused: panic");
            std::ptr::null()
        }
    }
}

/// `void envoy_dynamic_module_on_http_filter_config_destroy(config_module_ptr)`
///
/// # Safety
/// `config` is a pointer [`envoy_dynamic_module_on_http_filter_config_new`] returned, given
/// back once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    if config.is_null() {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: made by `Box::into_raw` in config_new; Envoy destroys it once, after the
        // last filter of the configuration.
        drop(unsafe { Box::from_raw(config as *mut Configured) });
    });
}

/// `filter_module_ptr envoy_dynamic_module_on_http_filter_new(config_module_ptr,
/// filter_envoy_ptr)`: no per-stream state, the configuration is the filter (non-null).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ModulePtr,
    _filter_envoy_ptr: EnvoyPtr,
) -> ModulePtr {
    config
}

/// `request_headers_status envoy_dynamic_module_on_http_filter_request_headers(
///     filter_envoy_ptr, filter_module_ptr, bool end_of_stream)`
///
/// # Safety
/// `filter` is Envoy's live stream; `module` the configuration from config_new.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: EnvoyPtr,
    module: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: the configuration outlives its filters (Envoy's contract).
    let cfg = unsafe { &*(module as *const Configured) };
    let checked = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `filter` is valid for this callback; the bytes are borrowed within it.
        let auth = unsafe { request_header(filter, b"authorization") };
        cfg.filter.check(auth)
    }));
    let checked = match checked {
        Ok(c) => c,
        Err(_) => {
            let outcome = cfg.filter.outcome_of(("error", "panic"));
            cfg.filter.count(outcome);
            // SAFETY: `filter` is valid for this callback.
            unsafe { panicked(cfg, filter) };
            filter::Checked {
                verdict: filter::unavailable("panic"),
                outcome,
                gauges: None,
                key_reload_failed: false,
            }
        }
    };
    let answered = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `filter` is valid for this callback.
        unsafe { observe(cfg, filter, &checked) };
        let verdict = &checked.verdict;
        // SAFETY: `filter` is valid for this callback.
        unsafe { apply(filter, verdict) }
    }));
    match answered {
        Ok(status) => status,
        Err(_) => {
            // SAFETY: `filter` is valid for this callback.
            unsafe { panicked(cfg, filter) };
            // SAFETY: as above; the answer of last resort carries static data only.
            unsafe { send(filter, &filter::unavailable("panic")) };
            STOP_ITERATION
        }
    }
}

/// Counts a caught panic: [`PANICS`], the counters file, Envoy's `veto_inproxy_panics`.
///
/// # Safety
/// `filter` is valid for the current callback.
unsafe fn panicked(cfg: &Configured, filter: EnvoyPtr) {
    PANICS.fetch_add(1, Ordering::Relaxed);
    cfg.filter.count_panic();
    if let Some(ids) = cfg.ids {
        // SAFETY: `filter` is valid; a label-less counter takes no values.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                filter,
                ids.panics,
                std::ptr::null_mut(),
                0,
                1,
            );
        }
    }
}

/// Counts one check in Envoy's stats (`veto_inproxy_checks{result, reason}`, a failed keys
/// reload) and refreshes the gauges when they are due.
///
/// # Safety
/// `filter` is valid for the current callback.
unsafe fn observe(cfg: &Configured, filter: EnvoyPtr, checked: &filter::Checked) {
    let Some(ids) = cfg.ids else {
        return;
    };
    if checked.key_reload_failed {
        // SAFETY: `filter` is valid; a label-less counter takes no values.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                filter,
                ids.key_reload_failures,
                std::ptr::null_mut(),
                0,
                1,
            );
        }
    }
    if let Some((result, reason)) = checked.outcome.and_then(|i| cfg.filter.outcomes.get(i)) {
        let mut values = [
            ModuleBuffer::of(result.as_bytes()),
            ModuleBuffer::of(reason.as_bytes()),
        ];
        // SAFETY: `filter` is valid; two values for the two label names; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                filter,
                ids.checks,
                values.as_mut_ptr(),
                values.len(),
                1,
            );
        }
    }
    if let Some((generation, position)) = checked.gauges {
        for (id, v) in [(ids.generation, generation), (ids.position, position)] {
            // SAFETY: `filter` is valid; label-less gauges take no values.
            unsafe {
                envoy_dynamic_module_callback_http_filter_set_gauge(
                    filter,
                    id,
                    std::ptr::null_mut(),
                    0,
                    v,
                );
            }
        }
    }
}

/// Carries a verdict out through Envoy's callbacks.
///
/// # Safety
/// `filter` is valid for the current callback.
unsafe fn apply(filter: EnvoyPtr, verdict: &Verdict) -> u32 {
    match verdict {
        Verdict::Allow(headers, allowed) => {
            if let Some(m) = allowed.as_ref().and_then(filter::Allowed::metadata) {
                // SAFETY: `filter` is valid for the current callback.
                unsafe { set_metadata(filter, m) };
            }
            for (name, value) in headers {
                let value = value
                    .as_deref()
                    .map_or(ModuleBuffer::NULL, |v| ModuleBuffer::of(v.as_bytes()));
                // SAFETY: the buffers live until the call returns; Envoy copies them.
                unsafe {
                    envoy_dynamic_module_callback_http_set_header(
                        filter,
                        REQUEST_HEADER,
                        ModuleBuffer::of(name.as_bytes()),
                        value,
                    );
                }
            }
            CONTINUE
        }
        Verdict::Respond { .. } => {
            // SAFETY: as above.
            unsafe { send(filter, verdict) };
            STOP_ITERATION
        }
    }
}

/// Puts the verified claims into the stream's dynamic metadata (allowed requests only: one
/// callback per claim, a list's items one each).
///
/// # Safety
/// `filter` is valid for the current callback.
unsafe fn set_metadata(filter: EnvoyPtr, metadata: &filter::Metadata) {
    use filter::Meta;
    let ns = ModuleBuffer::of(metadata.namespace.as_bytes());
    for (key, value) in metadata.entries.iter() {
        let k = ModuleBuffer::of(key.as_bytes());
        // SAFETY (every call below): `filter` is valid; the buffers live for the call and
        // Envoy copies them.
        match value {
            Meta::Str(s) => unsafe {
                envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                    filter,
                    ns,
                    k,
                    ModuleBuffer::of(s.as_bytes()),
                )
            },
            Meta::Num(n) => unsafe {
                envoy_dynamic_module_callback_http_set_dynamic_metadata_number(filter, ns, k, *n)
            },
            Meta::Bool(b) => unsafe {
                envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(filter, ns, k, *b)
            },
            Meta::List(items) => {
                for item in items {
                    match item {
                        Meta::Str(s) => unsafe {
                            envoy_dynamic_module_callback_http_add_dynamic_metadata_list_string(
                                filter,
                                ns,
                                k,
                                ModuleBuffer::of(s.as_bytes()),
                            );
                        },
                        Meta::Num(n) => unsafe {
                            envoy_dynamic_module_callback_http_add_dynamic_metadata_list_number(
                                filter, ns, k, *n,
                            );
                        },
                        Meta::Bool(b) => unsafe {
                            envoy_dynamic_module_callback_http_add_dynamic_metadata_list_bool(
                                filter, ns, k, *b,
                            );
                        },
                        // lists hold scalars only (`Metadata::of`)
                        Meta::List(_) => {}
                    }
                }
            }
        }
    }
}

/// Sends a `Verdict::Respond` as Envoy's local reply.
///
/// # Safety
/// `filter` is valid for the current callback.
unsafe fn send(filter: EnvoyPtr, verdict: &Verdict) {
    let Verdict::Respond {
        status,
        headers,
        body,
        details,
    } = verdict
    else {
        return;
    };
    let mut hs: Vec<ModuleHeader> = headers
        .iter()
        .map(|(k, v)| ModuleHeader {
            key_ptr: k.as_ptr().cast(),
            key_length: k.len(),
            value_ptr: v.as_ptr().cast(),
            value_length: v.len(),
        })
        .collect();
    // SAFETY: every pointer refers to `headers`, `body` and `details`, alive until the call
    // returns; Envoy copies what it keeps.
    unsafe {
        envoy_dynamic_module_callback_http_send_response(
            filter,
            *status,
            hs.as_mut_ptr(),
            hs.len(),
            ModuleBuffer::of(body.as_bytes()),
            ModuleBuffer::of(details.as_bytes()),
        );
    }
}

/// The bytes of an Envoy buffer (`None` for a null one).
///
/// # Safety
/// The buffer must be valid for the lifetime the caller gives the slice.
unsafe fn envoy_bytes<'a>(b: EnvoyBuffer) -> Option<&'a [u8]> {
    if b.ptr.is_null() {
        return None;
    }
    // SAFETY: Envoy's buffer: `length` bytes at `ptr`, valid as the caller promises.
    Some(unsafe { std::slice::from_raw_parts(b.ptr.cast::<u8>(), b.length) })
}

/// A request header: how many values it has and the first one's bytes (`None`: absent).
///
/// # Safety
/// `filter` is valid for the current callback; the slice must not outlive it.
unsafe fn request_header<'a>(filter: EnvoyPtr, name: &[u8]) -> Option<(usize, &'a [u8])> {
    let mut out = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
    let mut count: usize = 0;
    // SAFETY: `out` and `count` are valid for writes; the key buffer lives for the call.
    let found = unsafe {
        envoy_dynamic_module_callback_http_get_header(
            filter,
            REQUEST_HEADER,
            ModuleBuffer::of(name),
            &mut out,
            0,
            &mut count,
        )
    };
    if !found {
        return None;
    }
    // SAFETY: Envoy's header value, valid during this callback.
    let bytes = unsafe { envoy_bytes(out) }?;
    Some((count.max(1), bytes))
}

/// `void envoy_dynamic_module_on_http_filter_destroy(filter_module_ptr)`: nothing per
/// stream.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: ModulePtr) {}

/// `request_body_status ..._request_body(filter_envoy_ptr, filter_module_ptr, bool
/// end_of_stream)`: Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _f: EnvoyPtr,
    _m: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    0
}

/// `request_trailers_status ..._request_trailers(filter_envoy_ptr, filter_module_ptr)`:
/// Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _f: EnvoyPtr,
    _m: ModulePtr,
) -> u32 {
    0
}

/// `response_headers_status ..._response_headers(filter_envoy_ptr, filter_module_ptr, bool
/// end_of_stream)`: Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _f: EnvoyPtr,
    _m: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    0
}

/// `response_body_status ..._response_body(filter_envoy_ptr, filter_module_ptr, bool
/// end_of_stream)`: Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _f: EnvoyPtr,
    _m: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    0
}

/// `response_trailers_status ..._response_trailers(filter_envoy_ptr, filter_module_ptr)`:
/// Continue.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _f: EnvoyPtr,
    _m: ModulePtr,
) -> u32 {
    0
}

/// `void ..._stream_complete(filter_envoy_ptr, filter_module_ptr)`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_f: EnvoyPtr, _m: ModulePtr) {
}

/// `per_route_config_module_ptr ..._per_route_config_new(envoy_buffer name, envoy_buffer
/// config)`: per-route configuration is not supported (null refuses it).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> ModulePtr {
    std::ptr::null()
}

/// `void ..._per_route_config_destroy(per_route_config_module_ptr)`: never made.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_c: ModulePtr) {}

// Hooks Envoy 1.40 resolves at load for every HTTP filter module but calls only for features
// this filter never uses (scheduling, HTTP callouts and streams, watermarks, local-reply
// observation): defined so that loading succeeds, each returning 0 (Continue / void) and
// ignoring its arguments (the C calling convention leaves arguments to the caller, so a
// definition that reads none is sound whatever the caller passes).
macro_rules! unused_hooks {
    ($($name:ident),* $(,)?) => { $(
        #[no_mangle]
        pub extern "C" fn $name() -> u32 { 0 }
    )* };
}
unused_hooks!(
    envoy_dynamic_module_on_http_filter_local_reply,
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_config_scheduled,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
);

#[cfg(test)]
mod tests;
