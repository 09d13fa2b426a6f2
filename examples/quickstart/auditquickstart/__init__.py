"""A Flower app whose FedAvg server attacks and scores every audited client's update."""
