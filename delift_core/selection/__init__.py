"""Selection: objectives, greedy, select(), cover, the plan of a run."""
