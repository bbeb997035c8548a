print("outpostd")
