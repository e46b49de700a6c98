//! Builds the `forward` list of one input chunk.

use bytes::Bytes;

/// Collects what to pass on of one input chunk: zero-copy slices of the chunk (merged when
/// contiguous) and owned bytes (held back from earlier chunks, or injected).
pub(super) struct Forward<'a> {
    chunk: &'a Bytes,
    parts: Vec<Bytes>,
    run: Option<(usize, usize)>,
}

impl<'a> Forward<'a> {
    pub(super) fn new(chunk: &'a Bytes) -> Self {
        Forward {
            chunk,
            parts: Vec::new(),
            run: None,
        }
    }

    /// Passes on `chunk[start..end]`.
    pub(super) fn keep(&mut self, start: usize, end: usize) {
        if start >= end {
            return;
        }
        match &mut self.run {
            Some((_, run_end)) if *run_end == start => *run_end = end,
            _ => {
                self.flush();
                self.run = Some((start, end));
            }
        }
    }

    /// Passes on bytes that are not part of the chunk.
    pub(super) fn keep_owned(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.flush();
        self.parts.push(Bytes::from(bytes));
    }

    fn flush(&mut self) {
        if let Some((start, end)) = self.run.take() {
            self.parts.push(self.chunk.slice(start..end));
        }
    }

    pub(super) fn finish(mut self) -> Vec<Bytes> {
        self.flush();
        self.parts
    }
}
