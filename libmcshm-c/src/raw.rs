//! Pointer handling at the C boundary: the only `unsafe` of this crate besides the calls into
//! these helpers. Each helper checks what can be checked (null pointers, UTF-8, lengths) and
//! states the caller's contract for the rest, which is the C API's documented contract.

use std::ffi::{CStr, c_char, c_int};

use crate::{MCSHM_EINVAL, MCSHM_ENOMEM, mcshm_client};

/// Longest argument string or byte buffer accepted (larger lengths are refused as malformed).
const MAX_ARG: usize = 1 << 30;

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that lives for the call.
pub unsafe fn str_arg<'a>(p: *const c_char) -> Result<&'a str, c_int> {
    if p.is_null() {
        return Err(MCSHM_EINVAL);
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    let text = unsafe { CStr::from_ptr(p) };
    text.to_str().map_err(|_| MCSHM_EINVAL)
}

/// A byte-buffer argument of `len` bytes (`len` 0 accepts any pointer, null included).
///
/// # Safety
/// `p` is null or valid for reads of `len` bytes for the call.
pub unsafe fn bytes_arg<'a>(p: *const c_char, len: usize) -> Result<&'a [u8], c_int> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() || len > MAX_ARG {
        return Err(MCSHM_EINVAL);
    }
    // SAFETY: non-null, and valid for `len` bytes per the contract.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// Writes an out-parameter.
///
/// # Safety
/// `p` is null or valid for a write of a `T`.
pub unsafe fn out<T>(p: *mut T, value: T) -> Result<(), c_int> {
    if p.is_null() {
        return Err(MCSHM_EINVAL);
    }
    // SAFETY: non-null and valid per the contract; `write` does not read the old value.
    unsafe { p.write(value) };
    Ok(())
}

/// The handle behind a `mcshm_client *`.
///
/// # Safety
/// `p` is null or a live handle from `mcshm_open*` that no other thread uses during the call.
pub unsafe fn handle<'a>(p: *mut mcshm_client) -> Result<&'a mut mcshm_client, c_int> {
    // SAFETY: per the contract, non-null means live and exclusively ours for the call.
    unsafe { p.as_mut() }.ok_or(MCSHM_EINVAL)
}

/// A `malloc`ed copy of `bytes` (at least one byte allocated, so never null on success).
///
/// # Safety
/// None beyond Rust's: the returned pointer is the caller's to free with `free`.
pub unsafe fn copy_out(bytes: &[u8]) -> Result<*mut c_char, c_int> {
    // SAFETY: malloc has no preconditions; a null result is handled.
    let p = unsafe { libc::malloc(bytes.len().max(1)) }.cast::<u8>();
    if p.is_null() {
        return Err(MCSHM_ENOMEM);
    }
    // SAFETY: `p` holds at least `bytes.len()` bytes and cannot overlap `bytes`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    Ok(p.cast())
}

/// Frees a box handed to C with `Box::into_raw` (null is ignored).
///
/// # Safety
/// `p` is null or came from `Box::into_raw` of a `Box<T>` and is freed only once.
pub unsafe fn free_box<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: per the contract, a live box of ours, freed once.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Most keys one `mcshm_get_multi` takes (a bound on what a bad `count` can make us read).
pub const MCSHM_MAX_MULTI_KEYS: usize = 1 << 20;

/// `count` keys from parallel arrays of pointers and lengths.
///
/// # Safety
/// Null or valid for `count` entries each; every `keys[i]` null or valid for `key_lens[i]` bytes.
pub unsafe fn key_array<'a>(
    keys: *const *const c_char,
    key_lens: *const usize,
    count: usize,
) -> Result<Vec<&'a [u8]>, c_int> {
    if keys.is_null() || key_lens.is_null() || count == 0 || count > MCSHM_MAX_MULTI_KEYS {
        return Err(MCSHM_EINVAL);
    }
    // SAFETY: non-null, and per the contract valid for `count` entries each.
    let (keys, lens) = unsafe {
        (
            std::slice::from_raw_parts(keys, count),
            std::slice::from_raw_parts(key_lens, count),
        )
    };
    keys.iter()
        .zip(lens)
        // SAFETY: per the contract, each key is null or valid for its length.
        .map(|(&key, &len)| unsafe { bytes_arg(key, len) })
        .collect()
}
