"""What every stage shares: storage by URI, MLflow tracking, and the step contract."""
