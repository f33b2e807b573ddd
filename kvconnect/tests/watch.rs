//! Watch stream framing: 4-byte little-endian length prefix, zero-length keep-alives.

use proptest::prelude::*;
use sidekv_kvconnect::datapath::{KvEntry, Value, WatchKeyOutput, WatchOutput};
use sidekv_kvconnect::watch::*;

fn output(n: u8) -> WatchOutput {
    WatchOutput::success(vec![WatchKeyOutput::changed(Some(KvEntry::new(vec![2, n, 0], Value::Bytes(vec![n; n as usize]), [n; 10])))])
}

#[test]
fn frame_bytes() {
    // WatchOutput{status: SR_SUCCESS, keys: [{changed: true}]} = 08 01 12 02 08 01 (6 bytes).
    let out = WatchOutput::success(vec![WatchKeyOutput::changed(None)]);
    assert_eq!(encode_frame(&out), vec![6, 0, 0, 0, 0x08, 0x01, 0x12, 0x02, 0x08, 0x01]);
    assert_eq!(KEEPALIVE_FRAME, [0, 0, 0, 0]);
    // A real frame is never empty, even with no keys.
    assert_eq!(encode_frame(&WatchOutput::success(vec![])), vec![2, 0, 0, 0, 0x08, 0x01]);
    // The prefix is little-endian: a 300-byte payload has prefix 2c 01 00 00.
    let big = WatchOutput::success(vec![WatchKeyOutput::changed(Some(KvEntry::new(vec![1], Value::Bytes(vec![0; 270]), [0; 10])))]);
    let frame = encode_frame(&big);
    let len = frame.len() - 4;
    assert_eq!(&frame[..4], &(len as u32).to_le_bytes());
    assert!(len > 255);
}

#[test]
fn decodes_a_stream_fed_byte_by_byte() {
    let mut stream = Vec::new();
    stream.extend_from_slice(&KEEPALIVE_FRAME);
    encode_frame_into(&mut stream, &output(1));
    stream.extend_from_slice(&KEEPALIVE_FRAME);
    stream.extend_from_slice(&KEEPALIVE_FRAME);
    encode_frame_into(&mut stream, &output(2));

    let mut d = FrameDecoder::new();
    let mut frames = Vec::new();
    for b in &stream {
        d.push(std::slice::from_ref(b));
        while let Some(f) = d.next_frame().unwrap() {
            frames.push(f);
        }
    }
    d.finish().unwrap();
    let expected = vec![
        WatchFrame::KeepAlive,
        WatchFrame::Output(output(1)),
        WatchFrame::KeepAlive,
        WatchFrame::KeepAlive,
        WatchFrame::Output(output(2)),
    ];
    assert_eq!(frames, expected);
    assert_eq!(decode_frames(&stream).unwrap(), expected);
}

#[test]
fn stream_errors() {
    let frame = encode_frame(&output(3));
    assert_eq!(decode_frames(&frame[..frame.len() - 1]).unwrap_err(), FrameError::Truncated { buffered: frame.len() - 1 });
    assert_eq!(decode_frames(&[1, 0]).unwrap_err(), FrameError::Truncated { buffered: 2 });

    let mut d = FrameDecoder::with_max_frame_bytes(5);
    d.push(&[6, 0, 0, 0]);
    let err = d.next_frame().unwrap_err();
    assert_eq!(err, FrameError::FrameTooLarge { len: 6, max: 5 });
    assert_eq!(err.to_string(), "watch frame of 6 bytes exceeds the 5-byte maximum");
    // The default maximum is Deno's 16 MiB.
    let mut d = FrameDecoder::new();
    d.push(&((16 << 20) as u32 + 1).to_le_bytes());
    assert!(matches!(d.next_frame(), Err(FrameError::FrameTooLarge { .. })));

    // A frame whose payload is not a WatchOutput.
    let err = decode_frames(&[2, 0, 0, 0, 0x0a, 0x05]).unwrap_err();
    assert!(err.to_string().contains("com.deno.kv.datapath.WatchOutput"), "{err}");
}

proptest! {
    #[test]
    fn frames_survive_arbitrary_chunking(
        items in prop::collection::vec(prop::option::of(0u8..40), 0..8),
        cuts in prop::collection::vec(0usize..400, 0..6),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for item in &items {
            match item {
                None => { stream.extend_from_slice(&KEEPALIVE_FRAME); expected.push(WatchFrame::KeepAlive); }
                Some(n) => { encode_frame_into(&mut stream, &output(*n)); expected.push(WatchFrame::Output(output(*n))); }
            }
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for w in cuts.windows(2) {
            d.push(&stream[w[0]..w[1]]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(d.buffered(), 0);
        prop_assert_eq!(got, expected);
    }
}
