//! Any bytes as a protobuf `Policy`: validation accepts it or names the
//! field, never panics, and whatever it accepts survives the trip back to
//! protobuf and through validation again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use streamwatch::v1;
use streamwatch_server::api::{policy_from_proto, policy_to_proto};

fuzz_target!(|data: &[u8]| {
    let Ok(proto) = v1::Policy::decode(data) else {
        return;
    };
    match policy_from_proto(Some(&proto)) {
        Ok(policy) => {
            let again = policy_from_proto(Some(&policy_to_proto(&policy)))
                .expect("an accepted policy's own protobuf is accepted");
            assert_eq!(again, policy, "a policy survives the round trip");
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("invalid "), "names the field: {message}");
        }
    }
});
