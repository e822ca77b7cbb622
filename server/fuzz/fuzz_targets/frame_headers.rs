//! The frame meter's header scanner, fed any bytes cut anywhere: never a panic, and the same
//! headers whichever way the bytes are cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::frame_meter::HeaderScanner;

fuzz_target!(|input: (Vec<u8>, u16)| {
    let (bytes, cut) = input;
    let mut whole = Vec::new();
    HeaderScanner::default().feed(&bytes, |header| whole.push(header));
    let cut = usize::from(cut).min(bytes.len());
    let mut pieces = Vec::new();
    let mut scanner = HeaderScanner::default();
    scanner.feed(&bytes[..cut], |header| pieces.push(header));
    scanner.feed(&bytes[cut..], |header| pieces.push(header));
    assert_eq!(whole, pieces);
});
