fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        print!("{}", paygress::config::Config::help_text());
    }
}
