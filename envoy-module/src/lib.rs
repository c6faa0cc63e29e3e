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

mod abi;
pub mod filter;

use abi::*;
use filter::{InProxy, Verdict};
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

/// Panics caught in the hooks (each answered 503, or a refused configuration).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Reloads of the sidecar's published keys that failed, every configuration (the keys in use
/// were kept; see `filter`).
pub static KEY_RELOAD_FAILURES: AtomicU64 = AtomicU64::new(0);

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
    _config_envoy_ptr: EnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    // SAFETY: Envoy owns `config` and keeps it valid during this call.
    let json = unsafe { envoy_bytes(config) };
    let built = catch_unwind(|| InProxy::from_json(json.unwrap_or_default()));
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
        drop(unsafe { Box::from_raw(config as *mut InProxy) });
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
    let verdict = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the configuration outlives its filters (Envoy's contract).
        let cfg = unsafe { &*(module as *const InProxy) };
        // SAFETY: `filter` is valid for this callback; the bytes are borrowed within it.
        let auth = unsafe { request_header(filter, b"authorization") };
        cfg.decide(auth)
    }));
    let verdict = verdict.unwrap_or_else(|_| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        filter::unavailable("panic")
    });
    let answered = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `filter` is valid for this callback.
        unsafe { apply(filter, &verdict) }
    }));
    match answered {
        Ok(status) => status,
        Err(_) => {
            PANICS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: as above; the answer of last resort carries static data only.
            unsafe { send(filter, &filter::unavailable("panic")) };
            STOP_ITERATION
        }
    }
}

/// Carries a verdict out through Envoy's callbacks.
///
/// # Safety
/// `filter` is valid for the current callback.
unsafe fn apply(filter: EnvoyPtr, verdict: &Verdict) -> u32 {
    match verdict {
        Verdict::Allow(headers) => {
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
