// The bundle format lives here (issue 4).
