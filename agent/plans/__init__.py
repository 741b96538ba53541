"""Reading plans: daily freeze collection, interval reads, time discipline."""
