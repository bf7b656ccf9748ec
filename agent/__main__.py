from agent.cli import console

console()
