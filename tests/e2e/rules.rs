//! wrangler `[[rules]]`: Text, Data and CompiledWasm imports (tests/fixtures/rules).

use crate::harness::{fixture, Server};

#[test]
fn text_data_and_wasm_modules_import() {
    let server = Server::start(&[fixture("rules").to_str().unwrap()]);
    let v = server.get_json("/");
    assert_eq!(v["page"], "<h1>Hello from page.html</h1>\n");
    assert_eq!(v["notes"], "# Notes\nmarkdown as text\n");
    assert_eq!(v["dataIsArrayBuffer"], true);
    assert_eq!(v["dataBytes"], serde_json::json!([0, 1, 2, 254, 255]));
    assert_eq!(v["wasmIsModule"], true);
    assert_eq!(v["sum"], 42);
    assert_eq!(v["helper"], "helper(1)");
}
