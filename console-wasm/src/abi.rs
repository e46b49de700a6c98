//! The exported functions and their buffer ownership rules (see the crate docs).

use zeroize::Zeroize;

/// Takes back a buffer [`sshgw_alloc`] handed out.
///
/// # Safety
/// `ptr` and `len` must come from one `sshgw_alloc(len)` call, not yet taken back.
#[allow(unsafe_code)] // Rebuilding the Vec that sshgw_alloc leaked, at the ABI boundary.
unsafe fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if len == 0 {
        return Vec::new();
    }
    // SAFETY: per the contract, sshgw_alloc made this allocation with exactly this capacity.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// A result buffer: length prefix and JSON, leaked until `sshgw_free`.
fn give(value: &serde_json::Value) -> *mut u8 {
    let json = serde_json::to_vec(value).expect("a JSON value serializes");
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    Box::into_raw(out.into_boxed_slice()) as *mut u8
}

/// Reserves `len` bytes for the caller to fill (an input buffer).
#[allow(unsafe_code)] // An exported symbol: the ABI's entry point.
#[unsafe(no_mangle)]
pub extern "C" fn sshgw_alloc(len: usize) -> *mut u8 {
    let mut buf = vec![0u8; len].into_boxed_slice();
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

/// Releases a result buffer of `len` bytes (or an input buffer never passed on), zeroing
/// it first: results hold decrypted sessions, inputs may hold the key.
///
/// # Safety
/// As [`take`].
#[allow(unsafe_code)] // An exported symbol: the ABI's entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sshgw_free(ptr: *mut u8, len: usize) {
    // SAFETY: the caller passes a buffer this module handed out, with its length.
    unsafe { take(ptr, len) }.zeroize();
}

/// The key's public half, or why the text is not a private key.
///
/// # Safety
/// `key_ptr`/`key_len` as [`take`]; the buffer is consumed.
#[allow(unsafe_code)] // An exported symbol: the ABI's entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sshgw_key_info(key_ptr: *mut u8, key_len: usize) -> *mut u8 {
    // SAFETY: the caller hands over a buffer from sshgw_alloc.
    let mut key = unsafe { take(key_ptr, key_len) };
    let result = super::key_info(&key);
    key.zeroize();
    give(&result)
}

/// Decrypts a whole recording with the key.
///
/// # Safety
/// Both buffers as [`take`]; both are consumed.
#[allow(unsafe_code)] // An exported symbol: the ABI's entry point.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sshgw_decrypt(
    key_ptr: *mut u8,
    key_len: usize,
    rec_ptr: *mut u8,
    rec_len: usize,
) -> *mut u8 {
    // SAFETY: the caller hands over two buffers from sshgw_alloc.
    let (mut key, recording) = unsafe { (take(key_ptr, key_len), take(rec_ptr, rec_len)) };
    let result = super::decrypt(&key, &recording);
    key.zeroize();
    give(&result)
}
