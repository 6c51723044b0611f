use clap::Parser;
#[derive(Debug, Parser)]
struct Cmd {
    #[command(flatten)]
    sim: otamesh_sim::cli::SimArgs,
}
#[test]
fn scratch() {
    let args: Vec<String> = std::env::var("SWEEP").unwrap().split(' ').map(str::to_owned).collect();
    let mut argv = vec!["sim".to_owned(), "sweep".to_owned()];
    argv.extend(args);
    otamesh_sim::cli::run(Cmd::try_parse_from(argv).unwrap().sim).unwrap();
}
