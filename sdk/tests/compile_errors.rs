//! Misusing `#[plugin]` gives a plain compile error; the expected messages
//! are pinned in `tests/ui/*.stderr`.

#[test]
fn misuse_is_a_plain_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
