"""SMARS, the Smart Market Access Routing System: parent orders in, child orders out."""
