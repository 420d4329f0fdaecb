//! A zstd stream as image builders really write it: any number of frames, one after
//! another, with skippable frames in between.
//!
//! A layer is rarely a single frame. `zstd:chunked` (podman, buildah) compresses each
//! file in a frame of its own and appends its table of contents in skippable frames;
//! other tools concatenate frames as they flush. A decoder that stops after the first
//! frame hands the tar reader a stream that simply ends, which a tar reader takes as
//! the end of the archive: files go missing without an error. [`Frames`] decodes every
//! frame until the input ends, skips skippable frames, checks each frame's checksum,
//! and refuses a frame cut short.

use std::io::{self, BufRead, Read};

use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Skippable frames have magics `0x184D2A50..=0x184D2A5F` (RFC 8878 §3.1.2).
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// Decode in slices of this many bytes: enough to keep the decoder efficient, small
/// enough that a device's memory is not spent on buffers.
const SLICE: usize = 64 * 1024;

/// Every frame of a zstd stream, decoded in order, as one `Read`.
pub struct Frames<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> Frames<R> {
    pub fn new(source: R) -> Frames<R> {
        Frames {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }

    /// Reads the next frame's magic number; `None` at a clean end of input.
    fn next_magic(&mut self) -> io::Result<Option<u32>> {
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            let n = self.source.read(&mut magic[got..])?;
            if n == 0 {
                return match got {
                    0 => Ok(None),
                    _ => Err(invalid("zstd stream ends inside a frame header")),
                };
            }
            got += n;
        }
        Ok(Some(u32::from_le_bytes(magic)))
    }

    /// Moves to the next data frame, skipping skippable ones; false at the end of input.
    fn start_frame(&mut self) -> io::Result<bool> {
        loop {
            let Some(magic) = self.next_magic()? else {
                return Ok(false);
            };
            if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC {
                let mut len = [0u8; 4];
                self.source
                    .read_exact(&mut len)
                    .map_err(|_| invalid("zstd skippable frame ends inside its header"))?;
                let len = u64::from(u32::from_le_bytes(len));
                let skipped = io::copy(&mut (&mut self.source).take(len), &mut io::sink())?;
                if skipped != len {
                    return Err(invalid("zstd skippable frame is cut short"));
                }
                continue;
            }
            if magic != ZSTD_MAGIC {
                return Err(invalid(format!(
                    "zstd stream holds something that is not a frame (magic {magic:#010x})"
                )));
            }
            let header = magic.to_le_bytes();
            self.decoder
                .reset((&header[..]).chain(&mut self.source))
                .map_err(|e| invalid(format!("zstd frame header: {e}")))?;
            return Ok(true);
        }
    }

    fn finish_frame(&mut self) -> io::Result<()> {
        self.in_frame = false;
        match (
            self.decoder.get_checksum_from_data(),
            self.decoder.get_calculated_checksum(),
        ) {
            (Some(expected), Some(actual)) if expected != actual => Err(invalid(format!(
                "zstd frame checksum mismatch: {expected:#010x} != {actual:#010x}"
            ))),
            _ => Ok(()),
        }
    }
}

impl<R: BufRead> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.start_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            if self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                let want = buf.len().min(SLICE);
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(want))
                    .map_err(|e| invalid(format!("zstd: {e}")))?;
            }
            if self.decoder.can_collect() > 0 {
                return self.decoder.read(buf);
            }
            if self.decoder.is_finished() {
                self.finish_frame()?;
            }
        }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::zstd;

    fn decode(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Frames::new(io::BufReader::new(data)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn skippable(n: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (SKIPPABLE_MAGIC | u32::from(n)).to_le_bytes().to_vec();
        f.extend((payload.len() as u32).to_le_bytes());
        f.extend(payload);
        f
    }

    #[test]
    fn every_frame_is_decoded_and_skippable_frames_are_skipped() {
        let mut data = zstd(b"first frame, ");
        data.extend(skippable(0, b"a table of contents"));
        data.extend(zstd(b"second frame, "));
        data.extend(zstd(b""));
        data.extend(zstd(b"third frame"));
        data.extend(skippable(0xf, b"footer"));
        assert_eq!(
            decode(&data).unwrap(),
            b"first frame, second frame, third frame"
        );
    }

    #[test]
    fn a_large_multi_frame_stream_decodes_exactly() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
        let mut data = zstd(&a);
        data.extend(zstd(&b));
        let out = decode(&data).unwrap();
        assert_eq!(out.len(), a.len() + b.len());
        assert!(out[..a.len()] == a[..] && out[a.len()..] == b[..]);
    }

    #[test]
    fn cut_frames_and_foreign_bytes_are_refused() {
        let mut two = zstd(b"one");
        two.extend(zstd(&[7u8; 10_000]));
        let cut = &two[..two.len() - 3];
        assert!(decode(cut).is_err(), "a frame cut short");
        assert!(decode(&two[..two.len() - 1]).is_err());
        let mut junk = zstd(b"one");
        junk.extend(b"not zstd");
        let e = decode(&junk).unwrap_err();
        assert!(e.to_string().contains("not a frame"), "{e}");
        let mut skip = zstd(b"one");
        skip.extend(&skippable(1, b"0123456789")[..12]);
        assert!(decode(&skip).is_err(), "a skippable frame cut short");
        assert!(decode(&[0x28, 0xb5]).is_err(), "half a magic number");
    }
}
