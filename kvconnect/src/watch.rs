//! The v3 watch stream framing.
//!
//! `POST <endpoint>/watch` with a [`Watch`](crate::datapath::Watch) body is
//! answered `200` with `Content-Type: application/octet-stream` and a body
//! that never ends on its own: a sequence of frames, each a **4-byte
//! little-endian `u32` length** followed by that many bytes of a protobuf
//! [`WatchOutput`]. A zero length is a keep-alive with no payload, which
//! clients skip; denokv sends one every 5 s ([`KEEPALIVE_INTERVAL_SECS`]),
//! which also lets the server notice a client that went away.
//!
//! The first frame carries the current state of every watched key
//! (`changed = true` for all of them, `entry_if_changed` absent for a
//! missing key); later frames are sent when a watched key changes, and may
//! collapse several changes, as long as each frame is one consistent
//! snapshot. denokv marks every key `changed` in every frame, which is
//! always correct. Deno's CLI reads frames of at most 16 MiB
//! ([`MAX_FRAME_BYTES`]); when the stream ends or breaks it re-sends the
//! watch after a backoff, so ending a stream (e.g. on shutdown) is safe.
//!
//! A real `WatchOutput` is never empty on the wire (its `status` is
//! non-zero), so it can't be mistaken for a keep-alive.

use crate::datapath::{self, CodecError, WatchOutput};

/// The keep-alive frame: a zero length and nothing else.
pub const KEEPALIVE_FRAME: [u8; 4] = [0; 4];
/// How often denokv sends a keep-alive when nothing changed.
pub const KEEPALIVE_INTERVAL_SECS: u64 = 5;
/// The largest frame payload Deno's CLI accepts (its `LengthDelimitedCodec` maximum).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A frame read from a watch stream.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchFrame {
    /// A zero-length frame.
    KeepAlive,
    /// A state update.
    Output(WatchOutput),
}

/// What went wrong reading a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("watch frame of {len} bytes exceeds the {max}-byte maximum")]
    FrameTooLarge { len: usize, max: usize },
    #[error("watch stream ended inside a frame ({buffered} bytes left over)")]
    Truncated { buffered: usize },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Encode one [`WatchOutput`] as a length-prefixed frame.
pub fn encode_frame(output: &WatchOutput) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(&mut out, output);
    out
}

/// Append one length-prefixed [`WatchOutput`] frame to `out`.
pub fn encode_frame_into(out: &mut Vec<u8>, output: &WatchOutput) {
    let payload = datapath::encode(output);
    // A WatchOutput within the limits is far below 4 GiB.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// An incremental frame reader: feed it bytes as they arrive ([`push`](Self::push)),
/// take complete frames out ([`next_frame`](Self::next_frame)).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_frame_bytes: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the [`MAX_FRAME_BYTES`] limit.
    pub fn new() -> Self {
        Self::with_max_frame_bytes(MAX_FRAME_BYTES)
    }

    /// A decoder that rejects frames longer than `max_frame_bytes`.
    pub fn with_max_frame_bytes(max_frame_bytes: usize) -> Self {
        FrameDecoder { buf: Vec::new(), max_frame_bytes }
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, or `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<WatchFrame>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::FrameTooLarge { len, max: self.max_frame_bytes });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = if len == 0 { WatchFrame::KeepAlive } else { WatchFrame::Output(datapath::decode(&self.buf[4..4 + len])?) };
        self.buf.drain(..4 + len);
        Ok(Some(frame))
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// At the end of the stream: an error if it stopped inside a frame.
    pub fn finish(self) -> Result<(), FrameError> {
        if self.buf.is_empty() { Ok(()) } else { Err(FrameError::Truncated { buffered: self.buf.len() }) }
    }
}

/// Decode a complete stream body into its frames.
pub fn decode_frames(bytes: &[u8]) -> Result<Vec<WatchFrame>, FrameError> {
    let mut decoder = FrameDecoder::new();
    decoder.push(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame()? {
        frames.push(frame);
    }
    decoder.finish()?;
    Ok(frames)
}
