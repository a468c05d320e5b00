//! `paygress-cli`: see `paygress::cli`.

fn main() -> std::process::ExitCode {
    paygress::cli::main()
}
