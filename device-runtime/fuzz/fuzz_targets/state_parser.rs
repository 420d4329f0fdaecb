//! Any bytes given to the state parser: no panic, and whatever it accepts must
//! survive a serialise/parse round trip unchanged and validate again.
#![no_main]

use device_runtime::state::State;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = State::parse(data) {
        let again = serde_json::to_vec(&state).expect("serialise");
        let back = State::parse(&again).expect("a valid state re-parses");
        assert_eq!(back, state);
        let _ = state.objects();
        let _ = state.total_size();
    }
});
