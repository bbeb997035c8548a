// The update engine lives here (issue 4).
