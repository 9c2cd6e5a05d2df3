"""Result records, the collector, leaderboards and plots. Never imports Ray (a laptop can build a leaderboard)."""
