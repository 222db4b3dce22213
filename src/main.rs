fn main() -> std::process::ExitCode {
    paxosdb::cli::main()
}
