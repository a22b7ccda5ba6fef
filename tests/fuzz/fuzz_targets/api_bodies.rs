//! The JSON bodies of both APIs through the servers' own parsing and
//! validation: `strato vm`'s Firecracker-compatible handler on a microVM
//! that never boots, its `--config-file`, and the daemon's create and
//! resize requests.
//!
//! Input: requests separated by 0xff bytes (which UTF-8 never contains),
//! each `route`, `len` and `len` bytes of path id (or of method and target
//! for route 11), then the body. Routes: 0 PUT /machine-config, 1 PATCH
//! /machine-config, 2 PUT /boot-source, 3 PUT /drives/{id}, 4 PUT
//! /network-interfaces/{id}, 5 PUT /actions, 6 PATCH /vm, 7 GET
//! /vm/config, 8 a `--config-file` replacing the microVM, 9 the daemon's
//! create, 10 its resize, 11 any request line (PUT /cpu-config, PUT
//! /vsock and the /hotplug/memory ones among them).
#![no_main]

use api::daemon::model::{check_size, CreateRequest, Limits, ResizeRequest};
use api::http::{json_body, Request};
use api::vm_api::Unbooted;
use libfuzzer_sys::fuzz_target;
use strato_fuzz::Input;

const LIMITS: Limits = Limits {
    max_vcpus: 8,
    host_mib: 4096,
};

fn vm_request(vm: &Unbooted, method: &str, url: &str, body: &[u8]) {
    let resp = vm.handle(&Request::new(method, url, body.to_vec()));
    // The handler answers a request or refuses it; it never fails.
    assert!(
        matches!(resp.status(), 200 | 204 | 400),
        "{method} {url}: status {}",
        resp.status()
    );
}

fuzz_target!(|data: &[u8]| {
    let mut vm = Unbooted::new();
    for chunk in data.split(|&b| b == 0xff) {
        let mut input = Input::new(chunk);
        let route = input.u8();
        let len = input.u8();
        let id = String::from_utf8_lossy(input.bytes(usize::from(len))).into_owned();
        let body = input.rest();
        match route % 12 {
            0 => vm_request(&vm, "PUT", "/machine-config", body),
            1 => vm_request(&vm, "PATCH", "/machine-config", body),
            2 => vm_request(&vm, "PUT", "/boot-source", body),
            3 => vm_request(&vm, "PUT", &format!("/drives/{id}"), body),
            4 => vm_request(&vm, "PUT", &format!("/network-interfaces/{id}"), body),
            5 => vm_request(&vm, "PUT", "/actions", body),
            6 => vm_request(&vm, "PATCH", "/vm", body),
            7 => {
                // What GET /vm/config shows is a valid --config-file.
                let resp = vm.handle(&Request::new("GET", "/vm/config", Vec::new()));
                assert_eq!(resp.status(), 200);
                if let Err(e) = Unbooted::from_config(resp.body()) {
                    panic!("GET /vm/config is not a valid config file: {e}");
                }
            }
            8 => {
                if let Ok(configured) = Unbooted::from_config(body) {
                    vm = configured;
                }
            }
            9 => {
                let req = Request::new("POST", "/v1/instances", body.to_vec());
                if let Ok(create) = json_body::<CreateRequest>(&req) {
                    let _ = create.validate(&LIMITS);
                }
            }
            10 => {
                let req = Request::new("PATCH", "/v1/instances/x", body.to_vec());
                if let Ok(resize) = json_body::<ResizeRequest>(&req) {
                    if let (Some(vcpus), Some(mib)) = (resize.vcpus, resize.memory_mib) {
                        let _ = check_size(vcpus, mib, &LIMITS);
                    }
                }
            }
            _ => {
                let (method, url) = id.split_once(' ').unwrap_or(("GET", &id));
                vm_request(&vm, method, url, body);
            }
        }
    }
});
