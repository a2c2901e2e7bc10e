fn main() {
    std::process::exit(paddock::cli::main());
}
