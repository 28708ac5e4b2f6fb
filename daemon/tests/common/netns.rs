//! Network namespaces for tests that need a real (virtual) link: created with `ip netns`,
//! deleted on drop even when the test fails. Included by path by the tests that use it.

use std::process::Command;

/// Network namespaces created by this test, deleted on drop even when the test fails.
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn add(&mut self, name: &str) {
        // A namespace left over by a killed run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        self.0.push(name.to_string());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces, and a veth pair with either end.
        for n in self.0.iter().rev() {
            match Command::new("ip").args(["netns", "del", n]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "cleanup: ip netns del {n}: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("cleanup: ip netns del {n}: {e}"),
            }
        }
    }
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
