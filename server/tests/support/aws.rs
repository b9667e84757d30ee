//! The AWS emulator the test run starts (moto): tests find it through
//! `AWS_ENDPOINT_URL`, with test credentials and region from the environment.

/// Fails the test with instructions when no emulator is configured.
pub fn require_emulator() {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run the tests with .ci/run, which starts the AWS emulator \
         (moto_server) and exports it, or start one yourself and export AWS_ENDPOINT_URL, \
         AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    );
}
