//! A session's recent terminal output, addressed by absolute byte offset, so a client that reattaches can ask
//! for "everything after byte N" and learn exactly how much the buffer no longer holds.

use std::collections::VecDeque;

/// The last `capacity` bytes of an output stream that began at offset 0.
#[derive(Debug)]
pub struct OutputRing {
    bytes: VecDeque<u8>,
    /// The offset of `bytes[0]`: everything before it was evicted.
    start: u64,
    capacity: usize,
}

/// What [`OutputRing::read_from`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Slice {
    /// The offset of the first byte of `bytes`.
    pub offset: u64,
    /// Bytes wanted but already evicted (`offset - requested`, when the request was older than the buffer).
    pub dropped: u64,
    /// The bytes, at most the requested maximum.
    pub bytes: Vec<u8>,
}

impl OutputRing {
    /// An empty ring holding at most `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::new(),
            start: 0,
            capacity: capacity.max(1),
        }
    }

    /// The offset of the oldest byte still held.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The offset just past the newest byte: the total output so far.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The oldest offset that must survive for appending `incoming` bytes: appending evicts everything
    /// before it. A reader that has not yet reached it would lose bytes.
    pub fn start_after_push(&self, incoming: usize) -> u64 {
        let total = self.bytes.len() + incoming;
        let evicted = total.saturating_sub(self.capacity);
        self.start + evicted as u64
    }

    /// Appends output, evicting the oldest bytes beyond capacity.
    pub fn push(&mut self, data: &[u8]) {
        // Only the newest `capacity` bytes of an oversized chunk can survive anyway.
        let keep = data.len().min(self.capacity);
        let skipped = data.len() - keep;
        let data = data.get(skipped..).unwrap_or_default();
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.start += (overflow + skipped) as u64;
        self.bytes.extend(data);
    }

    /// Up to `max` bytes from `offset` on. An offset older than the buffer starts at the oldest byte held and
    /// reports the gap as `dropped`; an offset beyond the end yields nothing from the end.
    pub fn read_from(&self, offset: u64, max: usize) -> Slice {
        let from = offset.clamp(self.start, self.end());
        let dropped = from - offset.min(from);
        // `from` lies within [start, end], so this index is within the buffer.
        let first = usize::try_from(from - self.start).unwrap_or(self.bytes.len());
        let last = first.saturating_add(max).min(self.bytes.len());
        let (front, back) = self.bytes.as_slices();
        let mut bytes = Vec::with_capacity(last - first);
        // The wanted range [first, last) may straddle the two halves of the deque.
        bytes.extend_from_slice(
            front
                .get(first.min(front.len())..last.min(front.len()))
                .unwrap_or_default(),
        );
        let (back_first, back_last) = (
            first.saturating_sub(front.len()),
            last.saturating_sub(front.len()),
        );
        bytes.extend_from_slice(back.get(back_first..back_last).unwrap_or_default());
        Slice {
            offset: from,
            dropped,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keeps_the_newest_bytes_and_counts_offsets() {
        let mut ring = OutputRing::new(8);
        ring.push(b"hello ");
        ring.push(b"world");
        assert_eq!(ring.end(), 11);
        assert_eq!(ring.start(), 3);
        let slice = ring.read_from(0, 100);
        assert_eq!(slice.offset, 3);
        assert_eq!(slice.dropped, 3);
        assert_eq!(slice.bytes, b"lo world");
        let slice = ring.read_from(6, 3);
        assert_eq!((slice.offset, slice.dropped), (6, 0));
        assert_eq!(slice.bytes, b"wor");
        assert!(ring.read_from(11, 10).bytes.is_empty());
        assert_eq!(ring.read_from(50, 10).offset, 11);
    }

    #[test]
    fn an_oversized_chunk_keeps_its_tail() {
        let mut ring = OutputRing::new(4);
        ring.push(b"abcdefgh");
        assert_eq!((ring.start(), ring.end()), (4, 8));
        assert_eq!(ring.read_from(0, 10).bytes, b"efgh");
    }

    #[test]
    fn start_after_push_predicts_eviction() {
        let mut ring = OutputRing::new(10);
        ring.push(b"12345678");
        assert_eq!(ring.start_after_push(2), 0);
        assert_eq!(ring.start_after_push(5), 3);
        ring.push(b"abcde");
        assert_eq!(ring.start(), 3);
    }

    proptest! {
        /// Whatever the chunking, the ring holds exactly the last `capacity` bytes of the stream at their
        /// offsets, and a reader that keeps up sees the whole stream.
        #[test]
        fn matches_a_naive_model(
            capacity in 1usize..64,
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..20),
        ) {
            let mut ring = OutputRing::new(capacity);
            let mut all = Vec::new();
            let mut read = Vec::new();
            let mut keeping_up = true;
            for chunk in &chunks {
                keeping_up &= chunk.len() <= capacity;
                ring.push(chunk);
                all.extend_from_slice(chunk);
                let tail_start = all.len().saturating_sub(capacity);
                prop_assert_eq!(ring.start(), tail_start as u64);
                prop_assert_eq!(ring.end(), all.len() as u64);
                let slice = ring.read_from(0, usize::MAX);
                prop_assert_eq!(&slice.bytes[..], &all[tail_start..]);
                prop_assert_eq!(slice.dropped, tail_start as u64);
                // A reader that reads after every push loses nothing while every chunk fits.
                if keeping_up {
                    let next = ring.read_from(read.len() as u64, usize::MAX);
                    prop_assert_eq!(next.dropped, 0);
                    read.extend(next.bytes);
                }
            }
            if chunks.iter().all(|c| c.len() <= capacity) {
                prop_assert_eq!(read, all);
            }
        }
    }
}
