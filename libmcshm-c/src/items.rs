//! Item operations: one key (get, gets, set, add, replace, append, prepend, cas, delete, incr,
//! decr with or without an initial value, touch) and many keys in one call (`mcshm_get_multi`).

use std::ffi::{c_char, c_int, c_void};

use libmcshm::{StoreVerb, Stored};

use crate::raw::{self, bytes_arg, handle, out};
use crate::{
    MCSHM_EINVAL, MCSHM_EXISTS, MCSHM_MISS, MCSHM_NOT_STORED, MCSHM_OK, guard, mcshm_client,
    with_callback,
};

/// Gets a key. On `MCSHM_OK`, `*value` is a `malloc`ed copy of the value (free it with
/// `mcshm_free`), `*value_len` its length, `*flags` (may be null) its flags. `MCSHM_MISS` if the
/// key is not there (or its server is down under failover none).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_get(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    value: *mut *mut c_char,
    value_len: *mut usize,
    flags: *mut u32,
) -> c_int {
    guard(|| {
        // SAFETY: per the API: a live handle, and `key` valid for `key_len` bytes.
        let (h, key) = unsafe { (handle(client)?, bytes_arg(key, key_len)?) };
        if value.is_null() || value_len.is_null() {
            return Err(MCSHM_EINVAL);
        }
        let found = with_callback(h, |c| c.get(key))?;
        let Some(item) = found else {
            return Ok(MCSHM_MISS);
        };
        // SAFETY: the out-pointers are non-null and valid per the API; `copy_out` allocates
        // with malloc (at least one byte, so an empty value is a valid pointer too).
        unsafe {
            out(value, raw::copy_out(&item.value)?)?;
            out(value_len, item.value.len())?;
            if !flags.is_null() {
                out(flags, item.flags)?;
            }
        }
        Ok(MCSHM_OK)
    })
}

/// Frees a value returned by `mcshm_get`. Null is ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_free(value: *mut c_char) {
    // SAFETY: a non-null value came from malloc in `mcshm_get`, and is freed once.
    unsafe { libc::free(value.cast()) }
}

#[allow(clippy::too_many_arguments)] // the C signature, plus the verb
fn store(
    client: *mut mcshm_client,
    verb: StoreVerb,
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
    flags: u32,
    ttl: i64,
) -> c_int {
    guard(|| {
        // SAFETY: per the API: a live handle, `key` and `value` valid for their lengths.
        let (h, key, value) = unsafe {
            (
                handle(client)?,
                bytes_arg(key, key_len)?,
                bytes_arg(value, value_len)?,
            )
        };
        match with_callback(h, |c| c.store(verb, key, value, flags, ttl))? {
            Stored::Stored => Ok(MCSHM_OK),
            Stored::NotStored => Ok(MCSHM_NOT_STORED),
            Stored::Exists => Ok(MCSHM_EXISTS),
            Stored::NotFound => Ok(MCSHM_MISS),
        }
    })
}

/// Stores a value (flags, TTL in seconds or a Unix time; 0: never expires).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_set(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
    flags: u32,
    ttl: i64,
) -> c_int {
    store(
        client,
        StoreVerb::Set,
        key,
        key_len,
        value,
        value_len,
        flags,
        ttl,
    )
}

/// Stores a value only if the key is not there (`MCSHM_NOT_STORED` otherwise).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_add(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
    flags: u32,
    ttl: i64,
) -> c_int {
    store(
        client,
        StoreVerb::Add,
        key,
        key_len,
        value,
        value_len,
        flags,
        ttl,
    )
}

/// Stores a value only if the key is there (`MCSHM_NOT_STORED` otherwise).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_replace(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
    flags: u32,
    ttl: i64,
) -> c_int {
    store(
        client,
        StoreVerb::Replace,
        key,
        key_len,
        value,
        value_len,
        flags,
        ttl,
    )
}

/// Deletes a key (`MCSHM_MISS` if it was not there).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_delete(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the API: a live handle, and `key` valid for `key_len` bytes.
        let (h, key) = unsafe { (handle(client)?, bytes_arg(key, key_len)?) };
        Ok(if with_callback(h, |c| c.delete(key))? {
            MCSHM_OK
        } else {
            MCSHM_MISS
        })
    })
}

fn arith(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    delta: u64,
    up: bool,
    result: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: per the API: a live handle, and `key` valid for `key_len` bytes.
        let (h, key) = unsafe { (handle(client)?, bytes_arg(key, key_len)?) };
        let value = with_callback(h, |c| {
            if up {
                c.incr(key, delta)
            } else {
                c.decr(key, delta)
            }
        })?;
        match value {
            Some(v) => {
                if !result.is_null() {
                    // SAFETY: non-null and valid per the API.
                    unsafe { out(result, v)? };
                }
                Ok(MCSHM_OK)
            }
            None => Ok(MCSHM_MISS),
        }
    })
}

/// Increments a counter; `*value` (may be null) gets the new value. `MCSHM_MISS` if absent.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_incr(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    delta: u64,
    value: *mut u64,
) -> c_int {
    arith(client, key, key_len, delta, true, value)
}

/// Decrements a counter (stops at 0); `*value` (may be null) gets the new value.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_decr(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    delta: u64,
    value: *mut u64,
) -> c_int {
    arith(client, key, key_len, delta, false, value)
}

/// Sets a key's expiration time (`MCSHM_MISS` if absent).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_touch(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    ttl: i64,
) -> c_int {
    guard(|| {
        // SAFETY: per the API: a live handle, and `key` valid for `key_len` bytes.
        let (h, key) = unsafe { (handle(client)?, bytes_arg(key, key_len)?) };
        Ok(if with_callback(h, |c| c.touch(key, ttl))? {
            MCSHM_OK
        } else {
            MCSHM_MISS
        })
    })
}

/// Gets a key with its cas unique (`*cas`), for a following `mcshm_cas`; otherwise as
/// `mcshm_get`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_gets(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    value: *mut *mut c_char,
    value_len: *mut usize,
    flags: *mut u32,
    cas: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: per the API: a live handle, and `key` valid for `key_len` bytes.
        let (h, key) = unsafe { (handle(client)?, bytes_arg(key, key_len)?) };
        if value.is_null() || value_len.is_null() || cas.is_null() {
            return Err(MCSHM_EINVAL);
        }
        let Some(item) = with_callback(h, |c| c.gets(key))? else {
            return Ok(MCSHM_MISS);
        };
        // SAFETY: the out-pointers are non-null and valid per the API; `copy_out` allocates
        // with malloc.
        unsafe {
            out(value, raw::copy_out(&item.value)?)?;
            out(value_len, item.value.len())?;
            out(cas, item.cas.unwrap_or(0))?;
            if !flags.is_null() {
                out(flags, item.flags)?;
            }
        }
        Ok(MCSHM_OK)
    })
}

/// Stores a value only if the item is unchanged since `mcshm_gets` returned `cas`:
/// `MCSHM_OK`, `MCSHM_EXISTS` (changed since), or `MCSHM_MISS` (gone).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_cas(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
    flags: u32,
    ttl: i64,
    cas: u64,
) -> c_int {
    store(
        client,
        StoreVerb::Cas(cas),
        key,
        key_len,
        value,
        value_len,
        flags,
        ttl,
    )
}

/// Appends to an existing value (`MCSHM_NOT_STORED` if the key is absent).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_append(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
) -> c_int {
    store(
        client,
        StoreVerb::Append,
        key,
        key_len,
        value,
        value_len,
        0,
        0,
    )
}

/// Prepends to an existing value (`MCSHM_NOT_STORED` if the key is absent).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_prepend(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
) -> c_int {
    store(
        client,
        StoreVerb::Prepend,
        key,
        key_len,
        value,
        value_len,
        0,
        0,
    )
}

/// Increments a counter, creating it with `initial` (and `ttl`) when it is absent, as
/// libmemcached's `memcached_increment_with_initial`: `*value` (may be null) gets the counter.
/// A counter created by another client meanwhile is incremented instead.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_incr_initial(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    delta: u64,
    initial: u64,
    ttl: i64,
    value: *mut u64,
) -> c_int {
    arith_initial(client, key, key_len, delta, true, initial, ttl, value)
}

/// Decrements a counter (stopping at 0), creating it with `initial` when it is absent; as
/// `mcshm_incr_initial`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_decr_initial(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    delta: u64,
    initial: u64,
    ttl: i64,
    value: *mut u64,
) -> c_int {
    arith_initial(client, key, key_len, delta, false, initial, ttl, value)
}

#[allow(clippy::too_many_arguments)]
fn arith_initial(
    client: *mut mcshm_client,
    key: *const c_char,
    key_len: usize,
    delta: u64,
    up: bool,
    initial: u64,
    ttl: i64,
    result: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: per the API: a live handle, and `key` valid for `key_len` bytes.
        let (h, key) = unsafe { (handle(client)?, bytes_arg(key, key_len)?) };
        let counted = with_callback(h, |c| c.incr_or_create(key, delta, up, initial, ttl))?;
        let Some(value) = counted else {
            return Ok(MCSHM_NOT_STORED);
        };
        if !result.is_null() {
            // SAFETY: non-null and valid per the API.
            unsafe { out(result, value)? };
        }
        Ok(MCSHM_OK)
    })
}

/// Called by `mcshm_get_multi` once per key found: its index in the `keys` array, the value
/// (`value_len` bytes, valid only during the call), its flags and cas unique, and `user`.
pub type mcshm_item_fn = Option<
    unsafe extern "C" fn(
        index: usize,
        value: *const c_char,
        value_len: usize,
        flags: u32,
        cas: u64,
        user: *mut c_void,
    ),
>;

/// Gets `count` keys in one call (pipelined per server): `callback` is called once for each
/// key found, with its index in `keys`; missing keys are not called back. `*hits` (may be null)
/// gets the number found. `MCSHM_OK` when every server answered (hits or misses), else the
/// error of a server that failed (the keys other servers had are still called back).
/// `key_lens[i]` is the length of `keys[i]`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mcshm_get_multi(
    client: *mut mcshm_client,
    keys: *const *const c_char,
    key_lens: *const usize,
    count: usize,
    callback: mcshm_item_fn,
    user: *mut c_void,
    hits: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the API: a live handle; `keys` and `key_lens` hold `count` entries,
        // each key valid for its length.
        let (h, keys) = unsafe { (handle(client)?, raw::key_array(keys, key_lens, count)?) };
        let Some(callback) = callback else {
            return Err(MCSHM_EINVAL);
        };
        let found = with_callback(h, |c| c.get_many(&keys, true))?;
        let index: std::collections::HashMap<&[u8], usize> =
            keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let mut called = 0;
        for item in &found.items {
            if let Some(&i) = index.get(item.key.as_slice()) {
                // SAFETY: the caller registered `callback` for this call with `user`; the value
                // lives until it returns.
                unsafe {
                    callback(
                        i,
                        item.value.as_ptr().cast(),
                        item.value.len(),
                        item.flags,
                        item.cas.unwrap_or(0),
                        user,
                    )
                };
                called += 1;
            }
        }
        if !hits.is_null() {
            // SAFETY: non-null and valid per the API.
            unsafe { out(hits, called)? };
        }
        match found.errors.first() {
            Some((_, err)) => Err(crate::code(err)),
            None => Ok(MCSHM_OK),
        }
    })
}
