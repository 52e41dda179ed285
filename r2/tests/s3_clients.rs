//! boto3 and the aws CLI against `cinder-r2-server` on a loopback socket: every S3 operation
//! the endpoint offers, presigned URLs, aws-chunked bodies, virtual-host addressing, and the
//! XML errors (bad signature, missing bucket, bad range...). The cases live in
//! tests/s3/suite.py; each runs as its own Rust test so a failure names it.

mod common;

use std::time::Duration;

use common::{python, require_clients, Server};

fn run(case: &str) {
    require_clients();
    let dir = tempfile::tempdir().expect("tmp");
    let server = Server::start(dir.path());
    let (ok, out) = python(&server, "suite.py", &[case], Duration::from_secs(240));
    print!("{out}");
    assert!(ok, "suite.py {case} failed:\n{out}");
}

#[test]
fn boto3_buckets() {
    run("buckets");
}

#[test]
fn boto3_objects_metadata_ranges_conditionals() {
    run("objects_metadata_ranges_conditionals");
}

#[test]
fn boto3_list_v2_and_v1() {
    run("list_v2_and_v1");
}

#[test]
fn boto3_delete_objects_and_copy() {
    run("delete_objects_and_copy");
}

#[test]
fn boto3_multipart_low_level() {
    run("multipart_low_level");
}

#[test]
fn boto3_managed_transfers() {
    run("managed_transfers");
}

#[test]
fn presigned_urls() {
    run("presigned_urls");
}

#[test]
fn error_xml_bad_signature_missing_bucket_bad_range() {
    run("error_xml");
}

#[test]
fn aws_chunked_uploads_signed_and_trailers() {
    run("aws_chunked_uploads");
}

#[test]
fn virtual_host_style() {
    run("virtual_host_style");
}

#[test]
fn aws_cli() {
    run("aws_cli");
}
