//! Shared by the fuzz targets: the input is a recorded session (gateway/fuzz/README.md):
//! records of a tag (`S` server → client, anything else client → server), a big-endian
//! u32 length and the bytes; read leniently so that any input means something.

pub fn records(mut input: &[u8]) -> Vec<(bool, &[u8])> {
    let mut records = Vec::new();
    while let Some(&tag) = input.first() {
        let header = input.len().min(5);
        let len = if header == 5 {
            u32::from_be_bytes([input[1], input[2], input[3], input[4]]) as usize
        } else {
            0
        };
        let end = header + len.min(input.len() - header);
        records.push((tag != b'S', &input[header..end]));
        input = &input[end..];
    }
    records
}

/// Whether `part` is `whole` with some bytes left out.
pub fn is_subsequence(part: &[u8], whole: &[u8]) -> bool {
    let mut whole = whole.iter();
    part.iter().all(|b| whole.any(|w| w == b))
}
