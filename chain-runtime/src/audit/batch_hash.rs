//! BLAKE3 of many short inputs at once: the records of a chain are hashed independently (a
//! record's hash covers its own members, `prev_hash` among them), so verification can hash
//! several at a time with the SIMD lanes side by side (eight inputs per AVX2 pass) instead of
//! one input's blocks one after another.
//!
//! A record's canonical form is one BLAKE3 chunk (at most 1 024 bytes): its blocks before the
//! last go through [`Platform::hash_many`] for every input of the same block count together,
//! its last block is compressed alone as the root. The result is exactly `blake3::hash` of each
//! input (the tests compare every length up to past one chunk); longer or empty inputs and
//! inputs of one block go through `blake3::hash` itself.
//!
//! `blake3::platform` is the crate's own dispatch (AVX2, SSE4.1, SSE2, NEON, portable, chosen
//! at run time), public but documented as unstable: a `blake3` release that changes it fails
//! to compile here, never silently.

use blake3::IncrementCounter;
use blake3::platform::Platform;

/// Bytes per block.
const BLOCK: usize = 64;

/// Bytes per chunk: longer inputs are hashed by `blake3::hash`.
const CHUNK: usize = 1024;

/// Inputs hashed side by side per call of [`Platform::hash_many`].
const LANES: usize = 16;

/// The BLAKE3 IV (the first words of SHA-256's), the key of plain hashing.
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

/// Block flags (BLAKE3 specification, section 2.1).
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 2;
const ROOT: u8 = 8;

/// Hashes batches of inputs; keeps its scratch space between batches.
#[derive(Debug)]
pub(crate) struct BatchHasher {
    platform: Platform,
    /// Input indices, by block count.
    order: Vec<(usize, usize)>,
}

impl Default for BatchHasher {
    fn default() -> Self {
        Self {
            platform: Platform::detect(),
            order: Vec::new(),
        }
    }
}

impl BatchHasher {
    /// `out[i] = blake3::hash(input i)` for the inputs laid one after another in `bytes`, input
    /// `i` ending at `ends[i]` (input 0 starting at 0). `out` is resized to `ends.len()`.
    pub(crate) fn hash(&mut self, bytes: &[u8], ends: &[usize], out: &mut Vec<[u8; 32]>) {
        out.clear();
        out.resize(ends.len(), [0; 32]);
        self.order.clear();
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let input = bytes.get(start..end).unwrap_or_default();
            if input.len() <= BLOCK || input.len() > CHUNK {
                out[i] = *blake3::hash(input).as_bytes();
            } else {
                // The blocks before the last one (which may be full too).
                self.order.push(((input.len() - 1) / BLOCK, i));
            }
            start = end;
        }
        self.order.sort_unstable();
        let starts = |i: usize| if i == 0 { 0 } else { ends[i - 1] };
        for group in self.order.chunk_by(|a, b| a.0 == b.0) {
            for lanes in group.chunks(LANES) {
                let mut inputs = [(0, 0, 0); LANES];
                for (slot, &(_, i)) in inputs.iter_mut().zip(lanes) {
                    *slot = (i, starts(i), ends[i]);
                }
                hash_lanes(
                    self.platform,
                    lanes[0].0,
                    bytes,
                    &inputs[..lanes.len()],
                    out,
                );
            }
        }
    }
}

/// Hashes the inputs `(index, start, end)` of `bytes`, which all have `blocks` blocks before
/// their last one (1 to 15), into `out[index]`.
fn hash_lanes(
    platform: Platform,
    blocks: usize,
    bytes: &[u8],
    inputs: &[(usize, usize, usize)],
    out: &mut [[u8; 32]],
) {
    macro_rules! by_blocks {
        ($($n:literal),*) => {
            match blocks {
                $($n => lanes_of::<{ $n * BLOCK }>(platform, bytes, inputs, out),)*
                _ => {
                    for &(i, start, end) in inputs {
                        out[i] = *blake3::hash(bytes.get(start..end).unwrap_or_default()).as_bytes();
                    }
                }
            }
        };
    }
    by_blocks!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

/// [`hash_lanes`] for inputs whose blocks before the last one are `N` bytes.
fn lanes_of<const N: usize>(
    platform: Platform,
    bytes: &[u8],
    inputs: &[(usize, usize, usize)],
    out: &mut [[u8; 32]],
) {
    let zero = [0u8; N];
    let mut prefixes = [&zero; LANES];
    let mut cvs = [0u8; 32 * LANES];
    let mut lanes = 0;
    for &(_, start, _) in inputs {
        if let Some(prefix) = bytes
            .get(start..start + N)
            .and_then(|p| <&[u8; N]>::try_from(p).ok())
        {
            prefixes[lanes] = prefix;
            lanes += 1;
        }
    }
    if lanes != inputs.len() {
        // Cannot happen (every input is longer than `N`); hashed one by one all the same.
        for &(i, start, end) in inputs {
            out[i] = *blake3::hash(bytes.get(start..end).unwrap_or_default()).as_bytes();
        }
        return;
    }
    platform.hash_many(
        &prefixes[..lanes],
        &IV,
        0,
        IncrementCounter::No,
        0,
        CHUNK_START,
        0,
        &mut cvs[..32 * lanes],
    );
    for (&(i, start, end), cv) in inputs.iter().zip(cvs.as_chunks::<32>().0) {
        let last = bytes.get(start + N..end).unwrap_or_default();
        let mut block = [0u8; BLOCK];
        block[..last.len()].copy_from_slice(last);
        let mut words = [0u32; 8];
        for (w, b) in words.iter_mut().zip(cv.as_chunks::<4>().0) {
            *w = u32::from_le_bytes(*b);
        }
        // `last` is 1 to 64 bytes.
        platform.compress_in_place(&mut words, &block, last.len() as u8, 0, CHUNK_END | ROOT);
        for (b, w) in out[i].as_chunks_mut::<4>().0.iter_mut().zip(words) {
            *b = w.to_le_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + seed * 7 + len) as u8).collect()
    }

    /// Lays `inputs` out as [`BatchHasher::hash`] takes them and checks every hash.
    fn check(hasher: &mut BatchHasher, inputs: &[Vec<u8>]) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for input in inputs {
            bytes.extend_from_slice(input);
            ends.push(bytes.len());
        }
        let mut out = Vec::new();
        hasher.hash(&bytes, &ends, &mut out);
        assert_eq!(out.len(), inputs.len());
        for (input, hash) in inputs.iter().zip(&out) {
            assert_eq!(
                hash,
                blake3::hash(input).as_bytes(),
                "length {}",
                input.len()
            );
        }
    }

    #[test]
    fn every_length_hashes_as_blake3_does() {
        let mut hasher = BatchHasher::default();
        // Each length alone, and in groups of every size up to past two passes of lanes.
        for len in 0..=CHUNK + 130 {
            check(&mut hasher, &[input(len, 0)]);
            let lanes = if len % 64 < 2 || len % 64 == 63 {
                2 * LANES + 3
            } else {
                9
            };
            let group: Vec<Vec<u8>> = (0..lanes).map(|s| input(len, s)).collect();
            check(&mut hasher, &group);
        }
    }

    #[test]
    fn mixed_lengths_in_one_batch_hash_as_blake3_does() {
        let mut hasher = BatchHasher::default();
        let lengths = [
            475, 0, 64, 65, 128, 129, 1024, 1025, 476, 475, 900, 475, 1, 3000, 475, 474, 477,
        ];
        let batch: Vec<Vec<u8>> = lengths
            .iter()
            .cycle()
            .take(70)
            .enumerate()
            .map(|(s, &len)| input(len, s))
            .collect();
        check(&mut hasher, &batch);
        check(&mut hasher, &[]);
    }
}
