//! The `/schedule hours 1 seconds 9 message ...` grammar: never a panic, whatever the input,
//! and a delay for whatever it accepts (or `None` when the sum overflows).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Some(Ok(command)) = wire::schedule::parse(text) {
        let _ = command.schedule.delay();
    }
});
