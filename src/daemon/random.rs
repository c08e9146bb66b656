//! Unpredictable identifiers from the kernel's random source.

use std::io::{self, Read};

/// `n` random bytes from the kernel.
pub fn bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// `n` random bytes as lowercase hex (2n characters): ids a client cannot
/// guess, such as lease ids.
pub fn hex(n: usize) -> io::Result<String> {
    use std::fmt::Write;
    Ok(bytes(n)?.iter().fold(String::with_capacity(2 * n), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_ids_differ() {
        let a = super::hex(16).unwrap();
        let b = super::hex(16).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
