//! `cairnd`: the container daemon. All logic lives in the library; this only hands over the
//! command line and turns a failure into an exit code.
fn main() -> std::process::ExitCode {
    cairnd::cli::main()
}
