//! kvs-local's JSON request bodies: parsing and every member accessor the operations use, with the members the
//! operations read (nested selectors included), must answer with a value or an error, never panic; values that
//! pass a range check must be in that range.
#![no_main]

use kvs_local::api::Input;
use kvs_local::api::control::check_arn;
use kvs_local::api::get_media::parse_fragment_number;
use libfuzzer_sys::fuzz_target;

const STRINGS: &[&str] = &[
    "StreamName",
    "StreamARN",
    "DeviceName",
    "MediaType",
    "KmsKeyId",
    "NextToken",
    "CurrentVersion",
    "Operation",
    "APIName",
    "ResourceARN",
    "StartSelectorType",
    "AfterFragmentNumber",
    "ContinuationToken",
    "FragmentSelectorType",
    "ComparisonOperator",
    "ComparisonValue",
];
const OBJECTS: &[&str] = &[
    "StartSelector",
    "FragmentSelector",
    "TimestampRange",
    "StreamNameCondition",
    "StreamStorageConfiguration",
];
const NUMBERS: &[&str] = &[
    "DataRetentionInHours",
    "DataRetentionChangeInHours",
    "MaxResults",
];
const TIMESTAMPS: &[&str] = &["StartTimestamp", "EndTimestamp"];

fn exercise(input: &Input, depth: usize) {
    for name in STRINGS {
        let _ = input.has(name);
        let _ = input.req_str(name);
        if let Ok(Some(s)) = input.opt_str_len(name, 1, 256) {
            let n = s.chars().count();
            assert!(
                (1..=256).contains(&n),
                "{name} of length {n} passed a 1..=256 check"
            );
        }
        if let Ok(Some(s)) = input.opt_str(name) {
            let _ = check_arn(name, s);
            if let Ok(seq) = parse_fragment_number(name, s) {
                assert!(
                    s.bytes().all(|b| b.is_ascii_digit()),
                    "{s:?} decoded to {seq:?}"
                );
            }
        }
    }
    for name in NUMBERS {
        let _ = input.opt_i64(name);
        if let Ok(Some(v)) = input.opt_int_range(name, 1, 10_000) {
            assert!(
                (1..=10_000).contains(&v),
                "{name} = {v} passed a 1..=10000 check"
            );
        }
    }
    for name in TIMESTAMPS {
        let _ = input.opt_timestamp_ms(name);
    }
    let _ = input.opt_string_list("Fragments");
    let _ = input.opt_string_list("TagKeyList");
    let _ = input.opt_string_map("Tags");
    let _ = input.opt_array("Fragments");
    if depth < 3 {
        for name in OBJECTS {
            if let Ok(Some(inner)) = input.opt_object(name) {
                exercise(&inner, depth + 1);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = Input::parse(data) {
        exercise(&input, 0);
    }
    let _ = kvs_local::api::Operation::from_path(&String::from_utf8_lossy(data));
});
