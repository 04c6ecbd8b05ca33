//! The `amqp-agent` binary: everything lives in the library; this only maps its result to an
//! exit code (never 0 on a fatal error, so service managers restart the agent).

fn main() {
    std::process::exit(amqp_agent::cli::main());
}
