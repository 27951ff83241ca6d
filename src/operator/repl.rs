pub fn repl(
    _p: &crate::operator::config::Project,
    _a: &crate::cli::ReplArgs,
    _r: &crate::operator::output::Reporter,
) -> crate::error::Result<i32> {
    Ok(0)
}
